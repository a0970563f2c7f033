//! Operator commands on the configured warehouse: `audit verify`, `keys rotate` and `read`.
//! They open the same store `sfsync run` writes (SQLite or Postgres, from the same config) and
//! never call Salesforce.
//!
//! Guarantees: `audit verify` only reads, and reports the first broken link of the hash chain.
//! `keys rotate` holds the single-applier lock, so it never races a running pipeline, and can be
//! run again after a failure (values already re-sealed stay so). `read` prints PII only with
//! `--decrypt`, and then writes one line to stderr saying who decrypted how many values of which
//! object; without it, the configured `pii_fields` (and any value still sealed) print as
//! `<encrypted>` — the store only returns opened rows, so they are opened in memory and masked.
//! The keyring holds the `[pii]` key and every `[[pii.old_keys]]` entry: values sealed under a
//! retired key open (and `keys rotate` re-seals them) as long as its entry is there.
//! Exit codes: 0 done (chain intact), 1 the command ran and failed (chain broken, rotation or
//! read error), 2 the config or the warehouse cannot be used (bad file, missing database,
//! unknown object, no key).

use std::collections::{BTreeSet, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{anyhow, Context};
use clap::{Args, Subcommand};
use serde_json::Value as J;
use sfsync_store::{CurrentRow, HistoryRow, StoreError, Value, Warehouse};

use crate::config::validate::{ValidConfig, ValidObject, ValidWarehouse};
use crate::run_cmd;

/// Exit code: the command ran and found a problem or failed.
const EXIT_FAILED: i32 = 1;
/// Exit code: the config or the warehouse cannot be used.
const EXIT_USAGE: i32 = 2;

/// What a PII value prints as without `--decrypt`.
pub(crate) const MASK: &str = "<encrypted>";

#[derive(Debug, Args)]
pub struct AuditArgs {
    #[command(subcommand)]
    pub command: AuditCommand,
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Walk the audit hash chain and check every link (exit 0 intact, 1 broken, 2 unusable config).
    Verify(ConfigArg),
}

#[derive(Debug, Args)]
pub struct KeysArgs {
    #[command(subcommand)]
    pub command: KeysCommand,
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Re-seal every PII value (curated, history, raw payloads, dead letters) under the
    /// configured `[pii]` key; values under a retired key need it in `[[pii.old_keys]]`.
    /// Stop `sfsync run` first: rotation takes the applier lock.
    Rotate(ConfigArg),
    /// Generate a PII data key under an AWS KMS key (GenerateDataKey AES_256) and write it
    /// wrapped (the base64 CiphertextBlob, for `wrapped_key_file`); the plaintext is never
    /// written. AWS region, endpoint and credentials from the standard AWS_* variables.
    KmsGenerate(crate::kms_cmd::KmsGenerateArgs),
    /// Move wrapped PII data keys to another KMS key (ReEncrypt): KMS key rotation without
    /// touching any sealed value. Then set `kms_key_id` to the new key.
    KmsRewrap(crate::kms_cmd::KmsRewrapArgs),
}

#[derive(Debug, Args)]
pub struct ConfigArg {
    /// The sfsync TOML config.
    #[arg(long)]
    pub config: PathBuf,
}

#[derive(Debug, Args)]
pub struct ReadArgs {
    /// The sfsync TOML config.
    #[arg(long)]
    pub config: PathBuf,
    /// The object to read (API name, as configured in `[[objects]]`).
    pub object: String,
    /// Only these record ids (repeat the flag for several).
    #[arg(long = "id", value_name = "ID")]
    pub ids: Vec<String>,
    /// Read the SCD2 history versions instead of the current rows.
    #[arg(long)]
    pub history: bool,
    /// Print PII values in plaintext (an operator action: reported on stderr with $USER).
    #[arg(long)]
    pub decrypt: bool,
    /// Output format.
    #[arg(long, value_enum, default_value_t = ReadFormat::Jsonl)]
    pub format: ReadFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ReadFormat {
    /// One JSON object per row.
    Jsonl,
    /// Aligned columns for a terminal.
    Table,
}

/// Why a command stopped, with its exit code.
pub(crate) struct Failure {
    code: i32,
    error: anyhow::Error,
}

pub(crate) fn usage(error: anyhow::Error) -> Failure {
    Failure {
        code: EXIT_USAGE,
        error,
    }
}

pub(crate) fn failed(error: anyhow::Error) -> Failure {
    Failure {
        code: EXIT_FAILED,
        error,
    }
}

/// `sfsync audit …`; returns the exit code.
pub fn audit(args: AuditArgs) -> i32 {
    match args.command {
        AuditCommand::Verify(a) => finish("audit verify", block_on(audit_verify(a))),
    }
}

/// `sfsync keys …`; returns the exit code.
pub fn keys(args: KeysArgs) -> i32 {
    match args.command {
        KeysCommand::Rotate(a) => finish("keys rotate", block_on(keys_rotate(a))),
        KeysCommand::KmsGenerate(a) => {
            finish("keys kms-generate", block_on(crate::kms_cmd::generate(a)))
        }
        KeysCommand::KmsRewrap(a) => finish("keys kms-rewrap", block_on(crate::kms_cmd::rewrap(a))),
    }
}

/// `sfsync read …`; returns the exit code.
pub fn read(args: ReadArgs) -> i32 {
    finish("read", block_on(read_rows(args)))
}

pub(crate) fn block_on<F: std::future::Future<Output = Result<i32, Failure>>>(
    f: F,
) -> Result<i32, Failure> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
        .map_err(failed)?
        .block_on(f)
}

/// Prints a failure with its whole cause chain and returns the exit code.
pub(crate) fn finish(command: &str, outcome: Result<i32, Failure>) -> i32 {
    match outcome {
        Ok(code) => code,
        Err(f) => {
            eprintln!("sfsync {command}: {:#}", f.error);
            f.code
        }
    }
}

/// The loaded config and the store it names.
pub(crate) struct Opened {
    pub(crate) config: ValidConfig,
    pub(crate) has_key: bool,
    pub(crate) store: Arc<dyn Warehouse>,
}

/// Loads the config and opens its warehouse, with the PII keyring when `with_keyring`. A
/// missing SQLite file is an error (opening would create an empty warehouse and report on it).
pub(crate) async fn open(path: &Path, with_keyring: bool) -> Result<Opened, Failure> {
    let (config, mut secrets) = run_cmd::load(path).await.map_err(usage)?;
    let has_key = secrets.pii_key.is_some();
    if !with_keyring {
        secrets.pii_key = None;
        secrets.pii_old_keys.clear();
    }
    if let ValidWarehouse::Sqlite { path: db } = &config.warehouse {
        if !db.is_file() {
            return Err(usage(anyhow!(
                "{}: the SQLite warehouse {} does not exist (warehouse.path; `sfsync run` \
                 creates it)",
                path.display(),
                db.display()
            )));
        }
    }
    let store = run_cmd::open_store(&config, &secrets)
        .await
        .with_context(|| {
            format!(
                "{}: opening the warehouse ({})",
                path.display(),
                config.warehouse.describe()
            )
        })
        .map_err(usage)?;
    Ok(Opened {
        config,
        has_key,
        store,
    })
}

async fn audit_verify(args: ConfigArg) -> Result<i32, Failure> {
    // Verification reads hashed entries only; it needs no key.
    let o = open(&args.config, false).await?;
    let v = o
        .store
        .verify_audit()
        .await
        .context("verifying the audit chain")
        .map_err(failed)?;
    println!("audit chain of {}", o.config.warehouse.describe());
    println!("entries checked: {}", v.entries);
    println!("operator actions checked: {}", v.operator_actions);
    match v.first_break {
        None => {
            println!(
                "result: intact (head {})",
                v.head.as_deref().unwrap_or("none: the chain is empty")
            );
            Ok(0)
        }
        Some((seq, reason)) => {
            println!("result: BROKEN at seq {seq}: {reason}");
            Ok(EXIT_FAILED)
        }
    }
}

async fn keys_rotate(args: ConfigArg) -> Result<i32, Failure> {
    let o = open(&args.config, true).await?;
    let Some((key_id, old_ids)) = o.config.pii.as_ref().map(|p| {
        let old: Vec<String> = p.old_keys.iter().map(|k| k.key_id.clone()).collect();
        (p.key_id.clone(), old)
    }) else {
        return Err(usage(anyhow!(
            "{}: no [pii] table: rotation re-seals PII under the configured key",
            args.config.display()
        )));
    };
    o.store
        .acquire_apply_lock()
        .await
        .context("stop `sfsync run` on this warehouse before rotating keys")
        .map_err(failed)?;
    // The store re-seals in chunks, each its own transaction: a failure leaves what was already
    // re-sealed under the current key (still readable with it) and the rest as it was.
    let report = o.store.rotate_keys().await.map_err(|e| {
        let hint = match &e {
            StoreError::Pii {
                reason,
                key_id: old,
                ..
            } if reason.starts_with("unknown key id") => {
                format!(
                    "values are sealed under key '{old}', which this config does not give \
                     (pii.key_id = '{key_id}'): add it as a [[pii.old_keys]] entry with \
                     key_id = \"{old}\" and its key_file or key_env, then run `sfsync keys \
                     rotate` again; rotation stopped there (values re-sealed before stay \
                     re-sealed; running it again is safe)"
                )
            }
            _ => "rotating keys: stopped (values re-sealed before stay re-sealed; running it \
                  again is safe)"
                .to_string(),
        };
        failed(anyhow::Error::new(e).context(hint))
    })?;
    println!(
        "re-sealed under key '{}': {} PII values, {} raw payloads and dead letters",
        report.new_key_id, report.values_resealed, report.raw_payloads_resealed
    );
    if !old_ids.is_empty() {
        println!(
            "nothing is sealed under the old keys any more ({}): remove them from \
             [[pii.old_keys]] and delete the key material",
            old_ids.join(", ")
        );
    }
    Ok(0)
}

async fn read_rows(args: ReadArgs) -> Result<i32, Failure> {
    let o = open(&args.config, true).await?;
    let object = configured_object(&o.config, &args.object)
        .ok_or_else(|| {
            let names: Vec<&str> = o.config.objects.iter().map(|o| o.name.as_str()).collect();
            usage(anyhow!(
                "{}: object '{}' is not configured (configured objects: {})",
                args.config.display(),
                args.object,
                names.join(", ")
            ))
        })?
        .clone();
    if args.decrypt && !o.has_key {
        return Err(usage(anyhow!(
            "{}: --decrypt needs the [pii] key, and the config has none",
            args.config.display()
        )));
    }
    let pii = PiiColumns(&object.pii_fields);
    let rows = if args.history {
        read_history(&*o.store, &object.name, &args.ids).await?
    } else {
        read_current(&*o.store, &object.name, &args.ids).await?
    };
    let mut shown = Vec::with_capacity(rows.len());
    let mut decrypted = 0u64;
    for row in rows {
        let mut out = Vec::with_capacity(row.len());
        for (col, v) in row {
            let v = match v {
                Shown::Data(v) if pii.is_pii(&col, &v) => {
                    if args.decrypt {
                        decrypted += 1;
                        json_value(&v)
                    } else {
                        J::String(MASK.into())
                    }
                }
                Shown::Data(v) => json_value(&v),
                Shown::Meta(j) => j,
            };
            out.push((col, v));
        }
        shown.push(out);
    }
    let written = write_rows(&shown, args.format);
    if args.decrypt {
        // An operator action: always said, whatever SFSYNC_LOG filters.
        eprintln!(
            "PII decrypted: user {} read {decrypted} PII values of {} ({} {} rows) from {}",
            operator(),
            object.name,
            shown.len(),
            if args.history { "history" } else { "current" },
            o.config.warehouse.describe()
        );
    }
    written
        .context("writing the rows to stdout")
        .map_err(failed)?;
    Ok(0)
}

fn configured_object<'a>(config: &'a ValidConfig, name: &str) -> Option<&'a ValidObject> {
    config
        .objects
        .iter()
        .find(|o| o.name.eq_ignore_ascii_case(name))
}

/// Who runs the command, for the decrypt notice.
pub(crate) fn operator() -> String {
    std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| "<unknown: $USER not set>".into())
}

/// The PII columns of an object: its configured `pii_fields` (columns are the field names in
/// lower case, as the pipeline builds the model); a value still in its sealed envelope (a column
/// no longer declared PII) counts too.
struct PiiColumns<'a>(&'a [String]);

impl PiiColumns<'_> {
    fn is_pii(&self, column: &str, v: &Value) -> bool {
        // A retyped field continues in `<column>__<type>` (see the pipeline's model).
        let base = column.rsplit_once("__").map_or(column, |(b, _)| b);
        self.0
            .iter()
            .any(|f| f.eq_ignore_ascii_case(column) || f.eq_ignore_ascii_case(base))
            || matches!(v, Value::Text(s) if sfsync_store::pii::is_sealed(s))
    }
}

/// One output cell before masking: a data column value or a piece of sync metadata.
enum Shown {
    Data(Value),
    Meta(J),
}

type Row = Vec<(String, Shown)>;

fn store_error(what: String) -> impl FnOnce(StoreError) -> Failure {
    move |e| {
        let hint = match &e {
            StoreError::InvalidInput { reason, .. } if reason.contains("no curated model") => Some(
                "the warehouse has no tables for it yet (`sfsync run` has not synced it)"
                    .to_string(),
            ),
            StoreError::Pii { reason, key_id, .. } if reason.starts_with("unknown key id") => {
                Some(format!(
                    "values are sealed under key '{key_id}', which this config does not give: \
                     add it as a [[pii.old_keys]] entry (or run `sfsync keys rotate` with it \
                     there first)"
                ))
            }
            _ => None,
        };
        let e = anyhow::Error::new(e).context(what);
        failed(match hint {
            Some(h) => e.context(h),
            None => e,
        })
    }
}

async fn read_current(
    store: &dyn Warehouse,
    object: &str,
    ids: &[String],
) -> Result<Vec<Row>, Failure> {
    let err = || store_error(format!("reading the current rows of {object}"));
    let rows = if ids.is_empty() {
        store.read_current(object).await.map_err(err())?
    } else {
        let mut found = store.load_current(object, ids).await.map_err(err())?;
        let mut seen = BTreeSet::new();
        let mut rows = Vec::new();
        for id in ids {
            if !seen.insert(id) {
                continue;
            }
            match found.remove(id) {
                Some(r) => rows.push(r),
                None => eprintln!("sfsync read: no current row of {object} with id {id}"),
            }
        }
        rows
    };
    Ok(rows.into_iter().map(current_row).collect())
}

async fn read_history(
    store: &dyn Warehouse,
    object: &str,
    ids: &[String],
) -> Result<Vec<Row>, Failure> {
    let rows = store
        .read_history(object)
        .await
        .map_err(store_error(format!("reading the history of {object}")))?;
    let wanted: BTreeSet<&str> = ids.iter().map(String::as_str).collect();
    Ok(rows
        .into_iter()
        .filter(|r| wanted.is_empty() || wanted.contains(r.id.as_str()))
        .map(history_row)
        .collect())
}

fn current_row(r: CurrentRow) -> Row {
    let mut out: Row = vec![("id".into(), Shown::Meta(J::String(r.id)))];
    out.extend(r.values.into_iter().map(|(c, v)| (c, Shown::Data(v))));
    out.push(("_sf_deleted".into(), Shown::Meta(J::Bool(r.deleted))));
    out.push((
        "_sf_change_type".into(),
        Shown::Meta(J::String(r.meta.change_type)),
    ));
    out.push((
        "_sf_commit_ts".into(),
        Shown::Meta(timestamp(r.meta.version.commit_timestamp)),
    ));
    out
}

fn history_row(r: HistoryRow) -> Row {
    let mut out: Row = vec![
        ("id".into(), Shown::Meta(J::String(r.id))),
        ("_sf_version".into(), Shown::Meta(J::from(r.version))),
        ("valid_from".into(), Shown::Meta(timestamp(r.valid_from_ms))),
        (
            "valid_to".into(),
            Shown::Meta(r.valid_to_ms.map_or(J::Null, timestamp)),
        ),
        ("is_current".into(), Shown::Meta(J::Bool(r.is_current))),
        ("change_type".into(), Shown::Meta(J::String(r.change_type))),
    ];
    out.extend(r.values.into_iter().map(|(c, v)| (c, Shown::Data(v))));
    out
}

fn timestamp(ms: i64) -> J {
    chrono::DateTime::from_timestamp_millis(ms).map_or(J::from(ms), |t| {
        J::String(t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
    })
}

/// A value as plain JSON: dates as `YYYY-MM-DD`, timestamps as RFC 3339 UTC.
fn json_value(v: &Value) -> J {
    match v {
        Value::Null => J::Null,
        Value::Bool(b) => J::Bool(*b),
        Value::Int(i) => J::from(*i),
        Value::Real(f) => J::from(*f),
        Value::Text(s) => J::String(s.clone()),
        Value::Date(days) => chrono::NaiveDate::from_ymd_opt(1970, 1, 1)
            .and_then(|e| e.checked_add_signed(chrono::Duration::days(i64::from(*days))))
            .map_or(J::from(*days), |d| J::String(d.to_string())),
        Value::Timestamp(ms) => timestamp(*ms),
    }
}

fn write_rows(rows: &[Vec<(String, J)>], format: ReadFormat) -> std::io::Result<()> {
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    match format {
        ReadFormat::Jsonl => {
            for row in rows {
                let obj: serde_json::Map<String, J> = row.iter().cloned().collect();
                serde_json::to_writer(&mut out, &obj)?;
                out.write_all(b"\n")?;
            }
        }
        ReadFormat::Table => write_table(&mut out, rows)?,
    }
    out.flush()
}

/// Columns in first-seen order; a column a row lacks (NULL) prints empty.
fn write_table(out: &mut impl Write, rows: &[Vec<(String, J)>]) -> std::io::Result<()> {
    let mut columns: Vec<&str> = Vec::new();
    for row in rows {
        for (c, _) in row {
            if !columns.contains(&c.as_str()) {
                columns.push(c);
            }
        }
    }
    let cells: Vec<HashMap<&str, String>> = rows
        .iter()
        .map(|row| {
            row.iter()
                .map(|(c, v)| (c.as_str(), table_cell(v)))
                .collect()
        })
        .collect();
    let widths: Vec<usize> = columns
        .iter()
        .map(|c| {
            cells
                .iter()
                .filter_map(|r| r.get(c).map(|s| s.chars().count()))
                .chain([c.len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |out: &mut dyn Write, values: Vec<&str>| -> std::io::Result<()> {
        let text: Vec<String> = values
            .iter()
            .zip(&widths)
            .map(|(v, w)| format!("{v:<w$}"))
            .collect();
        writeln!(out, "{}", text.join("  ").trim_end())
    };
    line(out, columns.clone())?;
    for r in &cells {
        line(
            out,
            columns
                .iter()
                .map(|c| r.get(c).map_or("", String::as_str))
                .collect(),
        )?;
    }
    writeln!(out, "({} rows)", rows.len())
}

fn table_cell(v: &J) -> String {
    match v {
        J::Null => String::new(),
        J::String(s) => s.replace('\n', "\\n").replace('\r', "\\r"),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_print_as_plain_json() {
        assert_eq!(json_value(&Value::Date(0)), J::String("1970-01-01".into()));
        assert_eq!(
            json_value(&Value::Timestamp(1_795_253_400_000)),
            J::String("2026-11-21T09:30:00.000Z".into())
        );
        assert_eq!(json_value(&Value::Int(-3)), J::from(-3));
        assert_eq!(json_value(&Value::Null), J::Null);
    }

    #[test]
    fn pii_columns_match_fields_case_insensitively_and_sealed_text() {
        let fields = vec!["Email".to_string()];
        let pii = PiiColumns(&fields);
        let plain = Value::Text("x".into());
        assert!(pii.is_pii("email", &plain));
        assert!(!pii.is_pii("name", &plain));
        let sealed = Value::Text("enc:v1:k1:AAAA".into());
        assert!(pii.is_pii("name", &sealed));
    }

    #[test]
    fn table_aligns_and_leaves_nulls_empty() {
        let rows = vec![
            vec![("id".to_string(), J::from("a")), ("n".into(), J::from(1))],
            vec![
                ("id".to_string(), J::from("bbb")),
                ("x".into(), J::from("l1\nl2")),
            ],
        ];
        let mut out = Vec::new();
        write_table(&mut out, &rows).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "id   n  x\na    1\nbbb     l1\\nl2\n(2 rows)\n"
        );
    }
}
