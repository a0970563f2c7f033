//! The Parquet archive of the raw change log: rows of one object and one UTC day go into
//! zstd-compressed Parquet files under `object=<Object>/date=<YYYY-MM-DD>/` in a local directory
//! or an S3 bucket, readable by any standard Parquet reader (pyarrow, Spark, DuckDB). Payloads
//! are archived exactly as given: a sealed (PII) payload stays sealed.
//!
//! Guarantees: a file enters its partition's manifest (`_manifest.json`) only after it was read
//! back from the store and its size, its sha256 and every row matched what was written; an error
//! anywhere leaves the manifest unchanged (at worst an unlisted file remains, which the retry
//! overwrites). File names are deterministic (object, day, offset range), so a retried write
//! replaces the same file and its manifest entry instead of adding a second one. Within one
//! [`Archive`], writes and deletions of a partition are serialised; manifests are updated by
//! read-modify-write, so one process writes an archive location at a time.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use arrow_array::{
    Array, ArrayRef, BinaryArray, BooleanArray, Int32Array, Int64Array, RecordBatch, StringArray,
    TimestampMillisecondArray,
};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use bytes::Bytes;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::prefix::PrefixStore;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::{KeyValue, ParquetMetaData};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;
use serde::{Deserialize, Serialize};
use sfsync_core::ErrorClass;
use sha2::{Digest, Sha256};

use crate::error::{object_store_class, Result, StoreError};

/// Parquet key-value metadata key naming the archive format version.
pub const VERSION_KEY: &str = "sfsync.archive.version";
/// The archive format version this build writes and reads.
pub const VERSION: &str = "1";
/// File name of a partition's manifest.
pub const MANIFEST_FILE: &str = "_manifest.json";

/// A row group closes at this many rows …
const ROW_GROUP_MAX_ROWS: usize = 100_000;
/// … or once its payloads reach this many bytes, whichever comes first.
const ROW_GROUP_MAX_PAYLOAD_BYTES: usize = 64 << 20;
/// A row's variable-length fields together may not exceed this (keeps every row group's
/// 32-bit Arrow offsets far from overflowing; a CDC event is at most 1 MB).
const MAX_ROW_BYTES: usize = 256 << 20;
/// Files larger than this are uploaded in parts.
const MULTIPART_THRESHOLD_BYTES: usize = 64 << 20;
/// Part size of a multipart upload (S3 wants ≥ 5 MiB for all but the last part).
const MULTIPART_PART_BYTES: usize = 16 << 20;
/// Parts in flight at once during a multipart upload.
const MULTIPART_CONCURRENCY: usize = 4;
/// zstd level of every column (3 is zstd's own default: most of the ratio, little CPU).
const ZSTD_LEVEL: i32 = 3;
/// Rows per decoded batch when reading.
const READ_BATCH_ROWS: usize = 4096;

/// Column names, in schema order.
const COLUMNS: [&str; 13] = [
    "log_offset",
    "channel",
    "event_key",
    "replay_id",
    "schema_id",
    "entity",
    "change_type",
    "commit_timestamp",
    "commit_number",
    "sequence_number",
    "payload",
    "payload_sealed",
    "appended_at",
];

type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// One raw-log row as archived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveRow {
    /// Log offset of the change (positive, unique, ascending within a file).
    pub offset: i64,
    /// CDC channel the change arrived on.
    pub channel: String,
    /// Dedupe identity of the change.
    pub event_key: String,
    /// Replay id of the carrying event, verbatim.
    pub replay_id: Vec<u8>,
    /// Writer schema id of the payload.
    pub schema_id: String,
    /// `entityName` of the change; the object the file is partitioned by.
    pub entity: String,
    /// `CREATE`, `UPDATE`, … as stored in the log.
    pub change_type: String,
    /// Commit timestamp, epoch ms; its UTC day is the file's partition day.
    pub commit_timestamp: i64,
    /// Commit number of the change.
    pub commit_number: i64,
    /// Sequence number of the change within its transaction.
    pub sequence_number: i32,
    /// The change's Avro payload; when `sealed`, the payload sealed by the keyring (PII objects).
    pub payload: Vec<u8>,
    /// Whether `payload` is sealed.
    pub sealed: bool,
    /// When the change was appended to the raw log, epoch ms.
    pub appended_at_ms: i64,
}

/// One archived Parquet file (also the manifest entry).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchiveFile {
    /// Object-store path relative to the archive root.
    pub path: String,
    /// The object (entity) of every row.
    pub object: String,
    /// `YYYY-MM-DD`, the UTC day of every row's commit timestamp.
    pub day: String,
    /// Number of rows.
    pub rows: u64,
    /// File size in bytes.
    pub bytes: u64,
    /// Sum of the rows' payload lengths.
    pub payload_bytes: u64,
    /// Lower-case hex sha256 of the file.
    pub sha256: String,
    /// Smallest log offset in the file.
    pub min_offset: i64,
    /// Largest log offset in the file.
    pub max_offset: i64,
    /// Earliest commit timestamp in the file, epoch ms.
    pub min_commit_ms: i64,
    /// Latest commit timestamp in the file, epoch ms.
    pub max_commit_ms: i64,
    /// When the file was written, epoch ms.
    pub created_at_ms: i64,
}

/// One partition (object and UTC day) with the files its manifest lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// The object.
    pub object: String,
    /// `YYYY-MM-DD` (UTC).
    pub day: String,
    /// The manifest's entries, ordered by offset.
    pub files: Vec<ArchiveFile>,
}

/// A partition's `_manifest.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Manifest {
    object: String,
    day: String,
    files: Vec<ArchiveFile>,
}

/// Where the archive lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArchiveLocation {
    /// A local directory (created on open).
    Local(PathBuf),
    /// An S3 bucket and a key prefix (without leading or trailing `/`; may be empty).
    S3 { bucket: String, prefix: String },
}

impl ArchiveLocation {
    /// Parses `s3://bucket/prefix`, `file:///absolute/path` or a plain local path. The error
    /// text names the location and the reason.
    pub fn parse(s: &str) -> Result<ArchiveLocation, String> {
        let s = s.trim();
        if s.is_empty() {
            return Err("archive location is empty: expected s3://bucket/prefix, \
                        file:///path or a local path"
                .into());
        }
        if let Some(rest) = s.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(format!("archive location '{s}' names no bucket"));
            }
            let bucket_ok = bucket
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.');
            if !bucket_ok {
                return Err(format!(
                    "archive location '{s}': bucket '{bucket}' may hold only lower-case \
                     letters, digits, '-' and '.'"
                ));
            }
            let prefix = prefix.trim_matches('/');
            if !prefix.is_empty() {
                ObjectPath::parse(prefix)
                    .map_err(|e| format!("archive location '{s}': prefix '{prefix}': {e}"))?;
            }
            return Ok(ArchiveLocation::S3 {
                bucket: bucket.to_string(),
                prefix: prefix.to_string(),
            });
        }
        if let Some(rest) = s.strip_prefix("file://") {
            if !rest.starts_with('/') {
                return Err(format!(
                    "archive location '{s}': a file URL names an absolute path with an empty \
                     host (file:///path)"
                ));
            }
            return Ok(ArchiveLocation::Local(PathBuf::from(rest)));
        }
        if let Some((scheme, _)) = s.split_once("://") {
            return Err(format!(
                "archive location '{s}': scheme '{scheme}' is not supported (use s3://bucket/\
                 prefix, file:///path or a local path)"
            ));
        }
        Ok(ArchiveLocation::Local(PathBuf::from(s)))
    }
}

impl fmt::Display for ArchiveLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ArchiveLocation::Local(dir) => write!(f, "{}", dir.display()),
            ArchiveLocation::S3 { bucket, prefix } if prefix.is_empty() => {
                write!(f, "s3://{bucket}")
            }
            ArchiveLocation::S3 { bucket, prefix } => write!(f, "s3://{bucket}/{prefix}"),
        }
    }
}

/// The archive: Parquet files and per-partition manifests in an object store.
pub struct Archive {
    store: Arc<dyn ObjectStore>,
    /// `file:///abs/dir` or `s3://bucket/prefix`.
    root: String,
    /// One lock per partition directory, serialising its writes and deletions.
    locks: parking_lot::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// [`MULTIPART_THRESHOLD_BYTES`] and [`MULTIPART_PART_BYTES`] (smaller in tests).
    multipart_threshold_bytes: usize,
    multipart_part_bytes: usize,
}

impl fmt::Debug for Archive {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Archive").field("root", &self.root).finish()
    }
}

/// Why an operation failed, before it is tied to an operation and a path.
struct Problem {
    class: ErrorClass,
    reason: String,
    source: Option<BoxError>,
}

impl Problem {
    /// Stored bytes that are not what the archive wrote (not retryable).
    fn corrupt(reason: impl Into<String>) -> Problem {
        Problem {
            class: ErrorClass::Internal,
            reason: reason.into(),
            source: None,
        }
    }

    fn caused(
        class: ErrorClass,
        reason: impl Into<String>,
        source: impl Into<BoxError>,
    ) -> Problem {
        Problem {
            class,
            reason: reason.into(),
            source: Some(source.into()),
        }
    }

    fn at(self, op: &'static str, path: impl Into<String>) -> StoreError {
        StoreError::Archive {
            op,
            path: path.into(),
            reason: self.reason,
            class: self.class,
            source: self.source,
        }
    }
}

fn store_error(op: &'static str, path: &str, reason: &str, e: object_store::Error) -> StoreError {
    Problem::caused(object_store_class(&e), reason, e).at(op, path)
}

fn bad_input(op: &'static str, path: &str, reason: impl Into<String>) -> StoreError {
    Problem {
        class: ErrorClass::User,
        reason: reason.into(),
        source: None,
    }
    .at(op, path)
}

/// Runs CPU-bound work (encoding, decoding, hashing) off the async runtime.
async fn blocking<T: Send + 'static>(
    op: &'static str,
    path: &str,
    work: impl FnOnce() -> std::result::Result<T, Problem> + Send + 'static,
) -> Result<T> {
    match tokio::task::spawn_blocking(work).await {
        Ok(done) => done.map_err(|p| p.at(op, path)),
        Err(e) => Err(Problem::caused(
            ErrorClass::Internal,
            "the worker thread did not complete",
            e,
        )
        .at(op, path)),
    }
}

impl Archive {
    /// Opens the archive. Local: creates the directory. S3:
    /// `object_store::aws::AmazonS3Builder::from_env()` (region, endpoint, credentials from the
    /// standard `AWS_*` variables, e.g. `AWS_ENDPOINT_URL`, `AWS_ALLOW_HTTP` for a local S3
    /// server) with the bucket; the prefix is prepended to every path. No request is made.
    pub fn open(location: &ArchiveLocation) -> Result<Archive> {
        let (store, root): (Arc<dyn ObjectStore>, String) = match location {
            ArchiveLocation::Local(dir) => {
                let shown = format!("file://{}", dir.display());
                let io = |what: &str, e: std::io::Error| {
                    let class = match e.kind() {
                        std::io::ErrorKind::PermissionDenied
                        | std::io::ErrorKind::NotADirectory
                        | std::io::ErrorKind::AlreadyExists => ErrorClass::User,
                        _ => ErrorClass::Retry,
                    };
                    Problem::caused(class, what, e).at("open", shown.clone())
                };
                std::fs::create_dir_all(dir)
                    .map_err(|e| io("cannot create the archive directory", e))?;
                let abs = std::fs::canonicalize(dir)
                    .map_err(|e| io("cannot resolve the archive directory", e))?;
                let root = format!("file://{}", abs.display());
                let fs = LocalFileSystem::new_with_prefix(&abs)
                    .map_err(|e| {
                        store_error("open", &root, "cannot open the archive directory", e)
                    })?
                    .with_automatic_cleanup(true)
                    .with_fsync(true);
                (Arc::new(fs), root)
            }
            ArchiveLocation::S3 { bucket, prefix } => {
                let root = location.to_string();
                let s3 = AmazonS3Builder::from_env()
                    .with_bucket_name(bucket)
                    .build()
                    .map_err(|e| {
                        Problem::caused(
                            ErrorClass::User,
                            "cannot configure S3 from the AWS_* environment",
                            e,
                        )
                        .at("open", root.clone())
                    })?;
                if prefix.is_empty() {
                    (Arc::new(s3), root)
                } else {
                    let prefix = ObjectPath::parse(prefix).map_err(|e| {
                        Problem::caused(ErrorClass::User, "invalid key prefix", e)
                            .at("open", root.clone())
                    })?;
                    (Arc::new(PrefixStore::new(s3, prefix)), root)
                }
            }
        };
        Ok(Archive {
            store,
            root,
            locks: parking_lot::Mutex::new(HashMap::new()),
            multipart_threshold_bytes: MULTIPART_THRESHOLD_BYTES,
            multipart_part_bytes: MULTIPART_PART_BYTES,
        })
    }

    /// `file:///abs/dir` or `s3://bucket/prefix`, for logs.
    pub fn describe(&self) -> String {
        self.root.clone()
    }

    /// Writes rows (all of one object and one UTC day, offset-ascending; anything else is
    /// refused) as one Parquet file
    /// `object=<Object>/date=<YYYY-MM-DD>/part-<min_offset:020>-<max_offset:020>.parquet`
    /// (a retried write overwrites the same file), zstd-compressed; then reads the file back from
    /// the store and compares its size and sha256 with the bytes written and every row with
    /// `rows`; only then adds (or replaces, same path) its entry in the partition's manifest and
    /// returns the entry. An error anywhere leaves the manifest unchanged.
    ///
    /// Memory: a copy of `rows` (encoding and verification run on a blocking thread), the
    /// encoded file and the file read back are held at once; size files accordingly.
    pub async fn write_file(&self, rows: &[ArchiveRow]) -> Result<ArchiveFile> {
        const OP: &str = "write";
        let plan = plan_file(rows).map_err(|reason| bad_input(OP, &self.root, reason))?;
        let rel = file_path(&plan.object, &plan.day, plan.min_offset, plan.max_offset);
        let loc = self.locate(&rel);
        let path = parse_path(OP, &loc, &rel)?;
        let lock = self.partition_lock(&partition_dir(&plan.object, &plan.day));
        let _serialised = lock.lock().await;

        let expected: Arc<Vec<ArchiveRow>> = Arc::new(rows.to_vec());
        let to_encode = Arc::clone(&expected);
        let (data, sha256) = blocking(OP, &loc, move || {
            let data = Bytes::from(encode(&to_encode)?);
            let sha = hex::encode(Sha256::digest(&data));
            Ok((data, sha))
        })
        .await?;
        let bytes = data.len();
        self.put(OP, &path, &loc, data).await?;

        let read = self
            .get(OP, &path, &loc, "reading the file back failed")
            .await?;
        let want_sha = sha256.clone();
        blocking(OP, &loc, move || {
            verify_read_back(read, bytes, &want_sha, &expected).map_err(|p| Problem {
                reason: format!("read-back verification failed: {}", p.reason),
                ..p
            })
        })
        .await?;

        let entry = ArchiveFile {
            path: rel,
            object: plan.object.clone(),
            day: plan.day.clone(),
            rows: rows.len() as u64,
            bytes: bytes as u64,
            payload_bytes: plan.payload_bytes,
            sha256,
            min_offset: plan.min_offset,
            max_offset: plan.max_offset,
            min_commit_ms: plan.min_commit_ms,
            max_commit_ms: plan.max_commit_ms,
            created_at_ms: chrono::Utc::now().timestamp_millis(),
        };
        let mut manifest = self
            .load_manifest(&plan.object, &plan.day)
            .await?
            .unwrap_or_else(|| Manifest {
                object: plan.object.clone(),
                day: plan.day.clone(),
                files: Vec::new(),
            });
        // A file whose offsets overlap the new one's is a leftover of an earlier attempt at
        // the same entries that was never recorded as archived (the archive job writes only
        // entries past its archived-through mark, split however that attempt split them): the
        // new file supersedes it, so no entry is listed twice.
        let (superseded, kept): (Vec<ArchiveFile>, Vec<ArchiveFile>) =
            manifest.files.drain(..).partition(|f| {
                f.path != entry.path
                    && f.min_offset <= entry.max_offset
                    && f.max_offset >= entry.min_offset
            });
        manifest.files = kept;
        manifest.files.retain(|f| f.path != entry.path);
        manifest.files.push(entry.clone());
        manifest
            .files
            .sort_by(|a, b| (a.min_offset, &a.path).cmp(&(b.min_offset, &b.path)));
        self.store_manifest(&manifest).await?;
        for old in superseded {
            // Unlisted now; a file that cannot be deleted is removed with its partition.
            let old_loc = self.locate(&old.path);
            if let Ok(p) = parse_path(OP, &old_loc, &old.path) {
                if let Err(e) = self.store.delete(&p).await {
                    tracing::warn!(file = %old_loc, error = %e, "A superseded archive file could not be deleted; it is no longer listed.");
                }
            }
        }
        Ok(entry)
    }

    /// Reads every row of the file at `path` (relative to the archive root).
    pub async fn read_file(&self, path: &str) -> Result<Vec<ArchiveRow>> {
        const OP: &str = "read";
        let loc = self.locate(path);
        let object_path = parse_path(OP, &loc, path)?;
        let data = self
            .get(OP, &object_path, &loc, "fetching the file failed")
            .await?;
        blocking(OP, &loc, move || {
            let mut rows = Vec::new();
            decode_each(data, |batch| {
                rows.extend(batch);
                Ok(())
            })?;
            Ok(rows)
        })
        .await
    }

    /// Re-reads a manifest entry's file and checks its size, sha256 and row count against the
    /// entry (and that it is an archive file of this version).
    pub async fn verify_file(&self, file: &ArchiveFile) -> Result<()> {
        const OP: &str = "verify";
        let loc = self.locate(&file.path);
        let path = parse_path(OP, &loc, &file.path)?;
        let data = match self.store.get(&path).await {
            Ok(got) => got.bytes().await,
            Err(e) => Err(e),
        };
        let data = data.map_err(|e| match e {
            object_store::Error::NotFound { .. } => Problem::caused(
                ErrorClass::Internal,
                "the file listed in the manifest is missing",
                e,
            )
            .at(OP, loc.as_str()),
            e => store_error(OP, &loc, "fetching the file failed", e),
        })?;
        let file = file.clone();
        blocking(OP, &loc, move || {
            if data.len() as u64 != file.bytes {
                return Err(Problem::corrupt(format!(
                    "the file is {} bytes; the manifest records {}",
                    data.len(),
                    file.bytes
                )));
            }
            let sha = hex::encode(Sha256::digest(&data));
            if sha != file.sha256 {
                return Err(Problem::corrupt(format!(
                    "the file's sha256 is {sha}; the manifest records {}",
                    file.sha256
                )));
            }
            let builder = open_reader(data)?;
            let rows = builder.metadata().file_metadata().num_rows();
            if u64::try_from(rows).ok() != Some(file.rows) {
                return Err(Problem::corrupt(format!(
                    "the file holds {rows} rows; the manifest records {}",
                    file.rows
                )));
            }
            Ok(())
        })
        .await
    }

    /// All partitions from their manifests, sorted by (object, day). A partition directory
    /// without a manifest (only unlisted files of failed writes) is not a partition; a manifest
    /// that cannot be read fails the call with an error naming it.
    pub async fn partitions(&self) -> Result<Vec<Partition>> {
        const OP: &str = "list";
        let top = self
            .store
            .list_with_delimiter(None)
            .await
            .map_err(|e| store_error(OP, &self.root, "listing objects failed", e))?;
        let mut out = Vec::new();
        for object_dir in top.common_prefixes {
            let Some(object) = object_dir
                .filename()
                .and_then(|n| n.strip_prefix("object="))
                .map(str::to_string)
            else {
                continue;
            };
            let days = self
                .store
                .list_with_delimiter(Some(&object_dir))
                .await
                .map_err(|e| {
                    store_error(
                        OP,
                        &self.locate(object_dir.as_ref()),
                        "listing days failed",
                        e,
                    )
                })?;
            for day_dir in days.common_prefixes {
                let Some(day) = day_dir.filename().and_then(|n| n.strip_prefix("date=")) else {
                    continue;
                };
                if let Some(m) = self.load_manifest(&object, day).await? {
                    out.push(Partition {
                        object: m.object,
                        day: m.day,
                        files: m.files,
                    });
                }
            }
        }
        out.sort_by(|a, b| (&a.object, &a.day).cmp(&(&b.object, &b.day)));
        Ok(out)
    }

    /// Deletes a partition's files (those its manifest lists and any unlisted ones left by failed
    /// writes) and then its manifest; returns the number of files deleted (the manifest not
    /// counted). A partition that does not exist deletes nothing and returns 0.
    pub async fn delete_partition(&self, object: &str, day: &str) -> Result<u64> {
        const OP: &str = "delete";
        check_object_name(object).map_err(|r| bad_input(OP, &self.root, r))?;
        if !is_day(day) {
            return Err(bad_input(
                OP,
                &self.root,
                format!("day '{day}' is not YYYY-MM-DD"),
            ));
        }
        let dir = partition_dir(object, day);
        let dir_loc = self.locate(&dir);
        let dir_path = parse_path(OP, &dir_loc, &dir)?;
        let manifest_rel = format!("{dir}/{MANIFEST_FILE}");
        let manifest_path = parse_path(OP, &dir_loc, &manifest_rel)?;
        let lock = self.partition_lock(&dir);
        let _serialised = lock.lock().await;

        let mut listing = self.store.list(Some(&dir_path));
        let mut files = Vec::new();
        while let Some(meta) = futures::StreamExt::next(&mut listing).await {
            match meta {
                Ok(meta) if meta.location != manifest_path => files.push(meta.location),
                Ok(_) => {}
                Err(object_store::Error::NotFound { .. }) => break,
                Err(e) => return Err(store_error(OP, &dir_loc, "listing the files failed", e)),
            }
        }
        let mut deleted = 0u64;
        for file in &files {
            match self.store.delete(file).await {
                Ok(()) => deleted += 1,
                Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => {
                    return Err(store_error(
                        OP,
                        &self.locate(file.as_ref()),
                        "deleting the file failed (the manifest is kept)",
                        e,
                    ))
                }
            }
        }
        match self.store.delete(&manifest_path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(deleted),
            Err(e) => Err(store_error(
                OP,
                &self.locate(&manifest_rel),
                "deleting the manifest failed (the partition's files are gone)",
                e,
            )),
        }
    }

    /// Display location of a path relative to the root.
    fn locate(&self, rel: &str) -> String {
        format!("{}/{}", self.root, rel)
    }

    fn partition_lock(&self, dir: &str) -> Arc<tokio::sync::Mutex<()>> {
        Arc::clone(self.locks.lock().entry(dir.to_string()).or_default())
    }

    async fn get(
        &self,
        op: &'static str,
        path: &ObjectPath,
        loc: &str,
        reason: &str,
    ) -> Result<Bytes> {
        let got = self
            .store
            .get(path)
            .await
            .map_err(|e| store_error(op, loc, reason, e))?;
        got.bytes()
            .await
            .map_err(|e| store_error(op, loc, reason, e))
    }

    /// Uploads `data`: one put up to [`MULTIPART_THRESHOLD_BYTES`] (atomic on S3 and on a local
    /// directory, which writes a staging file and renames it), a multipart upload above.
    async fn put(&self, op: &'static str, path: &ObjectPath, loc: &str, data: Bytes) -> Result<()> {
        if data.len() <= self.multipart_threshold_bytes {
            self.store
                .put(path, PutPayload::from(data))
                .await
                .map_err(|e| store_error(op, loc, "uploading the file failed", e))?;
            return Ok(());
        }
        let upload = self
            .store
            .put_multipart(path)
            .await
            .map_err(|e| store_error(op, loc, "starting the multipart upload failed", e))?;
        let part_bytes = self.multipart_part_bytes;
        let mut parts = WriteMultipart::new_with_chunk_size(upload, part_bytes);
        let mut start = 0;
        while start < data.len() {
            if let Err(e) = parts.wait_for_capacity(MULTIPART_CONCURRENCY).await {
                // Best effort: the upload's own error is the one worth reporting.
                let _ = parts.abort().await;
                return Err(store_error(op, loc, "uploading a part failed", e));
            }
            let end = (start + part_bytes).min(data.len());
            parts.put(data.slice(start..end));
            start = end;
        }
        parts
            .finish()
            .await
            .map_err(|e| store_error(op, loc, "completing the multipart upload failed", e))?;
        Ok(())
    }

    async fn load_manifest(&self, object: &str, day: &str) -> Result<Option<Manifest>> {
        const OP: &str = "read manifest";
        let rel = format!("{}/{MANIFEST_FILE}", partition_dir(object, day));
        let loc = self.locate(&rel);
        let path = parse_path(OP, &loc, &rel)?;
        let got = match self.store.get(&path).await {
            Ok(got) => got,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(store_error(OP, &loc, "fetching the manifest failed", e)),
        };
        let data = got
            .bytes()
            .await
            .map_err(|e| store_error(OP, &loc, "fetching the manifest failed", e))?;
        let manifest: Manifest = serde_json::from_slice(&data).map_err(|e| {
            Problem::caused(ErrorClass::Internal, "the manifest is not valid", e).at(OP, &*loc)
        })?;
        if manifest.object != object || manifest.day != day {
            return Err(Problem::corrupt(format!(
                "the manifest is for object '{}' day {}, not for its directory's",
                manifest.object, manifest.day
            ))
            .at(OP, loc));
        }
        Ok(Some(manifest))
    }

    async fn store_manifest(&self, manifest: &Manifest) -> Result<()> {
        const OP: &str = "write manifest";
        let rel = format!(
            "{}/{MANIFEST_FILE}",
            partition_dir(&manifest.object, &manifest.day)
        );
        let loc = self.locate(&rel);
        let path = parse_path(OP, &loc, &rel)?;
        let json = serde_json::to_vec_pretty(manifest).map_err(|e| {
            Problem::caused(ErrorClass::Internal, "serialising the manifest failed", e)
                .at(OP, &*loc)
        })?;
        // One put: atomic on S3 and on a local directory (staging file, then rename).
        self.store
            .put(&path, PutPayload::from(json))
            .await
            .map_err(|e| store_error(OP, &loc, "uploading the manifest failed", e))?;
        Ok(())
    }
}

/// `YYYY-MM-DD` of the UTC day holding `epoch_ms` (proleptic Gregorian; years outside
/// 0000–9999 are not four digits and are refused by [`Archive::write_file`]).
pub fn utc_day(epoch_ms: i64) -> String {
    let (y, m, d) = civil_from_days(epoch_ms.div_euclid(86_400_000));
    format!("{y:04}-{m:02}-{d:02}")
}

/// Civil date of a day count since 1970-01-01 (H. Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// The Arrow schema of an archive file.
pub fn archive_schema() -> SchemaRef {
    let ts = || DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()));
    let types = [
        DataType::Int64,
        DataType::Utf8,
        DataType::Utf8,
        DataType::Binary,
        DataType::Utf8,
        DataType::Utf8,
        DataType::Utf8,
        ts(),
        DataType::Int64,
        DataType::Int32,
        DataType::Binary,
        DataType::Boolean,
        ts(),
    ];
    Arc::new(Schema::new(
        COLUMNS
            .iter()
            .zip(types)
            .map(|(name, ty)| Field::new(*name, ty, false))
            .collect::<Vec<_>>(),
    ))
}

fn partition_dir(object: &str, day: &str) -> String {
    format!("object={object}/date={day}")
}

fn file_path(object: &str, day: &str, min_offset: i64, max_offset: i64) -> String {
    format!(
        "{}/part-{min_offset:020}-{max_offset:020}.parquet",
        partition_dir(object, day)
    )
}

fn parse_path(op: &'static str, loc: &str, rel: &str) -> Result<ObjectPath> {
    ObjectPath::parse(rel)
        .map_err(|e| Problem::caused(ErrorClass::User, "invalid archive path", e).at(op, loc))
}

/// An object name fit for a partition directory: a Salesforce API name.
fn check_object_name(object: &str) -> std::result::Result<(), String> {
    let mut chars = object.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "object '{object}' is not a Salesforce API name (a letter, then letters, digits \
             and '_') and cannot name a partition"
        ))
    }
}

fn is_day(day: &str) -> bool {
    let b = day.as_bytes();
    b.len() == 10
        && b.iter().enumerate().all(|(i, c)| match i {
            4 | 7 => *c == b'-',
            _ => c.is_ascii_digit(),
        })
}

/// What [`plan_file`] learnt from valid rows.
struct FilePlan {
    object: String,
    day: String,
    min_offset: i64,
    max_offset: i64,
    min_commit_ms: i64,
    max_commit_ms: i64,
    payload_bytes: u64,
}

/// Checks rows fit one file (non-empty, one object, one UTC day, offsets positive and
/// ascending, rows of sane size) and summarises them.
fn plan_file(rows: &[ArchiveRow]) -> std::result::Result<FilePlan, String> {
    let first = rows
        .first()
        .ok_or("no rows: an archive file holds at least one row")?;
    check_object_name(&first.entity)?;
    let day = utc_day(first.commit_timestamp);
    let mut plan = FilePlan {
        object: first.entity.clone(),
        day,
        min_offset: first.offset,
        max_offset: first.offset,
        min_commit_ms: first.commit_timestamp,
        max_commit_ms: first.commit_timestamp,
        payload_bytes: 0,
    };
    if !is_day(&plan.day) {
        return Err(format!(
            "row 0 (offset {}) has commit timestamp {} ms, outside the years 0000-9999",
            first.offset, first.commit_timestamp
        ));
    }
    let mut prev: Option<&ArchiveRow> = None;
    for (i, row) in rows.iter().enumerate() {
        if row.entity != plan.object {
            return Err(format!(
                "row {i} (offset {}) is of object '{}' but row 0 of '{}': a file holds one \
                 object",
                row.offset, row.entity, plan.object
            ));
        }
        let day = utc_day(row.commit_timestamp);
        if day != plan.day {
            return Err(format!(
                "row {i} (offset {}) was committed on {day} (UTC) but row 0 on {}: a file holds \
                 one UTC day",
                row.offset, plan.day
            ));
        }
        if row.offset < 0 {
            return Err(format!("row {i} has negative offset {}", row.offset));
        }
        if let Some(p) = prev {
            if row.offset <= p.offset {
                return Err(format!(
                    "row {i} has offset {} after offset {}: rows must be in ascending offset \
                     order without repeats",
                    row.offset, p.offset
                ));
            }
        }
        let size = row.payload.len()
            + row.replay_id.len()
            + row.channel.len()
            + row.event_key.len()
            + row.schema_id.len()
            + row.entity.len()
            + row.change_type.len();
        if size > MAX_ROW_BYTES {
            return Err(format!(
                "row {i} (offset {}) is {size} bytes, over the archive's {MAX_ROW_BYTES}-byte \
                 limit per row",
                row.offset
            ));
        }
        plan.max_offset = row.offset;
        plan.min_commit_ms = plan.min_commit_ms.min(row.commit_timestamp);
        plan.max_commit_ms = plan.max_commit_ms.max(row.commit_timestamp);
        plan.payload_bytes += row.payload.len() as u64;
        prev = Some(row);
    }
    Ok(plan)
}

fn writer_properties() -> std::result::Result<WriterProperties, Problem> {
    let level = ZstdLevel::try_new(ZSTD_LEVEL)
        .map_err(|e| Problem::caused(ErrorClass::Internal, "invalid zstd level", e))?;
    let mut props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(level))
        .set_max_row_group_row_count(Some(ROW_GROUP_MAX_ROWS))
        .set_key_value_metadata(Some(vec![KeyValue::new(
            VERSION_KEY.to_string(),
            VERSION.to_string(),
        )]));
    // Unique per row: a dictionary only costs, and min/max of payloads say nothing.
    for col in ["event_key", "replay_id", "payload"] {
        props = props.set_column_dictionary_enabled(ColumnPath::from(col), false);
    }
    for col in ["replay_id", "payload"] {
        props = props.set_column_statistics_enabled(ColumnPath::from(col), EnabledStatistics::None);
    }
    Ok(props.build())
}

/// Encodes valid rows (see [`plan_file`]) as a Parquet file, one row group per
/// [`ROW_GROUP_MAX_ROWS`] rows or [`ROW_GROUP_MAX_PAYLOAD_BYTES`] of payload.
fn encode(rows: &[ArchiveRow]) -> std::result::Result<Vec<u8>, Problem> {
    let failed = |e: parquet::errors::ParquetError| {
        Problem::caused(ErrorClass::Internal, "encoding Parquet failed", e)
    };
    let schema = archive_schema();
    let payload: usize = rows.iter().map(|r| r.payload.len()).sum();
    let out = Vec::with_capacity(payload / 2 + 4096);
    let mut writer = ArrowWriter::try_new(out, Arc::clone(&schema), Some(writer_properties()?))
        .map_err(failed)?;
    let mut start = 0;
    while start < rows.len() {
        let mut end = start;
        let mut group_payload = 0;
        while end < rows.len()
            && end - start < ROW_GROUP_MAX_ROWS
            && (end == start
                || group_payload + rows[end].payload.len() <= ROW_GROUP_MAX_PAYLOAD_BYTES)
        {
            group_payload += rows[end].payload.len();
            end += 1;
        }
        let batch = to_batch(&schema, &rows[start..end]).map_err(|e| {
            Problem::caused(ErrorClass::Internal, "building the Arrow batch failed", e)
        })?;
        writer.write(&batch).map_err(failed)?;
        writer.flush().map_err(failed)?;
        start = end;
    }
    writer.into_inner().map_err(failed)
}

fn to_batch(
    schema: &SchemaRef,
    rows: &[ArchiveRow],
) -> std::result::Result<RecordBatch, arrow_schema::ArrowError> {
    let ts = |f: fn(&ArchiveRow) -> i64| {
        TimestampMillisecondArray::from_iter_values(rows.iter().map(f)).with_timezone("UTC")
    };
    let text = |f: fn(&ArchiveRow) -> &str| StringArray::from_iter_values(rows.iter().map(f));
    let columns: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.offset))),
        Arc::new(text(|r| &r.channel)),
        Arc::new(text(|r| &r.event_key)),
        Arc::new(BinaryArray::from_iter_values(
            rows.iter().map(|r| &r.replay_id),
        )),
        Arc::new(text(|r| &r.schema_id)),
        Arc::new(text(|r| &r.entity)),
        Arc::new(text(|r| &r.change_type)),
        Arc::new(ts(|r| r.commit_timestamp)),
        Arc::new(Int64Array::from_iter_values(
            rows.iter().map(|r| r.commit_number),
        )),
        Arc::new(Int32Array::from_iter_values(
            rows.iter().map(|r| r.sequence_number),
        )),
        Arc::new(BinaryArray::from_iter_values(
            rows.iter().map(|r| &r.payload),
        )),
        Arc::new(BooleanArray::from(
            rows.iter().map(|r| r.sealed).collect::<Vec<bool>>(),
        )),
        Arc::new(ts(|r| r.appended_at_ms)),
    ];
    RecordBatch::try_new(Arc::clone(schema), columns)
}

/// A reader over an archive file, after checking its version and schema.
fn open_reader(
    data: Bytes,
) -> std::result::Result<ParquetRecordBatchReaderBuilder<Bytes>, Problem> {
    let builder = ParquetRecordBatchReaderBuilder::try_new(data)
        .map_err(|e| Problem::caused(ErrorClass::Internal, "not a readable Parquet file", e))?;
    check_version(builder.metadata())?;
    check_schema(builder.schema())?;
    Ok(builder)
}

fn check_version(metadata: &ParquetMetaData) -> std::result::Result<(), Problem> {
    let version = metadata
        .file_metadata()
        .key_value_metadata()
        .and_then(|kv| kv.iter().find(|kv| kv.key == VERSION_KEY))
        .and_then(|kv| kv.value.as_deref());
    match version {
        Some(VERSION) => Ok(()),
        Some(other) => Err(Problem::corrupt(format!(
            "the file is archive version {other}; this build reads version {VERSION}"
        ))),
        None => Err(Problem::corrupt(format!(
            "the file has no '{VERSION_KEY}' metadata: not an sfsync archive file"
        ))),
    }
}

fn check_schema(schema: &Schema) -> std::result::Result<(), Problem> {
    let want = archive_schema();
    let describe = |s: &Schema| {
        s.fields()
            .iter()
            .map(|f| {
                let null = if f.is_nullable() { " null" } else { "" };
                format!("{} {}{null}", f.name(), f.data_type())
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let same = schema.fields().len() == want.fields().len()
        && schema.fields().iter().zip(want.fields()).all(|(g, w)| {
            g.name() == w.name() && g.data_type() == w.data_type() && !g.is_nullable()
        });
    if same {
        Ok(())
    } else {
        Err(Problem::corrupt(format!(
            "the file's columns are [{}], not the archive's [{}]",
            describe(schema),
            describe(&want)
        )))
    }
}

/// Decodes an archive file batch by batch; returns the number of rows.
fn decode_each(
    data: Bytes,
    mut each: impl FnMut(Vec<ArchiveRow>) -> std::result::Result<(), Problem>,
) -> std::result::Result<u64, Problem> {
    let reader = open_reader(data)?
        .with_batch_size(READ_BATCH_ROWS)
        .build()
        .map_err(|e| Problem::caused(ErrorClass::Internal, "cannot read the file's rows", e))?;
    let mut count = 0u64;
    for batch in reader {
        let batch = batch.map_err(|e| {
            Problem::caused(ErrorClass::Internal, "decoding the file's rows failed", e)
        })?;
        let rows = rows_from_batch(&batch)?;
        count += rows.len() as u64;
        each(rows)?;
    }
    Ok(count)
}

fn column<T: 'static>(batch: &RecordBatch, index: usize) -> std::result::Result<&T, Problem> {
    let name = COLUMNS.get(index).copied().unwrap_or("?");
    let col = batch
        .columns()
        .get(index)
        .ok_or_else(|| Problem::corrupt(format!("column '{name}' is missing")))?;
    if col.null_count() > 0 {
        return Err(Problem::corrupt(format!("column '{name}' holds nulls")));
    }
    col.as_any().downcast_ref::<T>().ok_or_else(|| {
        Problem::corrupt(format!(
            "column '{name}' decoded as {}, not the archive's type",
            col.data_type()
        ))
    })
}

fn rows_from_batch(batch: &RecordBatch) -> std::result::Result<Vec<ArchiveRow>, Problem> {
    let offset = column::<Int64Array>(batch, 0)?;
    let channel = column::<StringArray>(batch, 1)?;
    let event_key = column::<StringArray>(batch, 2)?;
    let replay_id = column::<BinaryArray>(batch, 3)?;
    let schema_id = column::<StringArray>(batch, 4)?;
    let entity = column::<StringArray>(batch, 5)?;
    let change_type = column::<StringArray>(batch, 6)?;
    let commit_ts = column::<TimestampMillisecondArray>(batch, 7)?;
    let commit_number = column::<Int64Array>(batch, 8)?;
    let sequence_number = column::<Int32Array>(batch, 9)?;
    let payload = column::<BinaryArray>(batch, 10)?;
    let sealed = column::<BooleanArray>(batch, 11)?;
    let appended = column::<TimestampMillisecondArray>(batch, 12)?;
    Ok((0..batch.num_rows())
        .map(|i| ArchiveRow {
            offset: offset.value(i),
            channel: channel.value(i).to_string(),
            event_key: event_key.value(i).to_string(),
            replay_id: replay_id.value(i).to_vec(),
            schema_id: schema_id.value(i).to_string(),
            entity: entity.value(i).to_string(),
            change_type: change_type.value(i).to_string(),
            commit_timestamp: commit_ts.value(i),
            commit_number: commit_number.value(i),
            sequence_number: sequence_number.value(i),
            payload: payload.value(i).to_vec(),
            sealed: sealed.value(i),
            appended_at_ms: appended.value(i),
        })
        .collect())
}

/// The first field in which two rows differ.
fn first_difference(a: &ArchiveRow, b: &ArchiveRow) -> Option<&'static str> {
    let fields: [(&'static str, bool); 13] = [
        ("log_offset", a.offset == b.offset),
        ("channel", a.channel == b.channel),
        ("event_key", a.event_key == b.event_key),
        ("replay_id", a.replay_id == b.replay_id),
        ("schema_id", a.schema_id == b.schema_id),
        ("entity", a.entity == b.entity),
        ("change_type", a.change_type == b.change_type),
        ("commit_timestamp", a.commit_timestamp == b.commit_timestamp),
        ("commit_number", a.commit_number == b.commit_number),
        ("sequence_number", a.sequence_number == b.sequence_number),
        ("payload", a.payload == b.payload),
        ("payload_sealed", a.sealed == b.sealed),
        ("appended_at", a.appended_at_ms == b.appended_at_ms),
    ];
    fields.iter().find(|(_, same)| !same).map(|(name, _)| *name)
}

/// Checks bytes read back against what was written: size, sha256, then every row.
fn verify_read_back(
    read: Bytes,
    bytes: usize,
    sha256: &str,
    expected: &[ArchiveRow],
) -> std::result::Result<(), Problem> {
    if read.len() != bytes {
        return Err(Problem::corrupt(format!(
            "read {} bytes back, wrote {bytes}",
            read.len()
        )));
    }
    let sha = hex::encode(Sha256::digest(&read));
    if sha != sha256 {
        return Err(Problem::corrupt(format!(
            "the sha256 read back is {sha}, of the bytes written {sha256}"
        )));
    }
    let mut next = 0usize;
    let count = decode_each(read, |batch| {
        for row in batch {
            let Some(want) = expected.get(next) else {
                return Err(Problem::corrupt(format!(
                    "the file holds more than the {} rows written",
                    expected.len()
                )));
            };
            if let Some(field) = first_difference(&row, want) {
                return Err(Problem::corrupt(format!(
                    "row {next} (offset {}) differs in '{field}'",
                    want.offset
                )));
            }
            next += 1;
        }
        Ok(())
    })?;
    if count != expected.len() as u64 {
        return Err(Problem::corrupt(format!(
            "the file holds {count} rows, {} were written",
            expected.len()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY_MS: i64 = 86_400_000;
    /// 2024-03-10T00:00:00Z.
    const T0: i64 = 1_710_028_800_000;

    fn row(offset: i64, entity: &str, commit_ms: i64) -> ArchiveRow {
        ArchiveRow {
            offset,
            channel: format!("/data/{entity}ChangeEvent"),
            event_key: format!("{entity}:001{offset:015}:{commit_ms}"),
            replay_id: offset.to_be_bytes().to_vec(),
            schema_id: "3xT-Qz_schema".into(),
            entity: entity.into(),
            change_type: "UPDATE".into(),
            commit_timestamp: commit_ms,
            commit_number: 1_100_583_868_458 + offset,
            sequence_number: (offset % 7) as i32 + 1,
            payload: format!("avro payload of {entity} #{offset}").into_bytes(),
            sealed: false,
            appended_at_ms: commit_ms + 150,
        }
    }

    fn archive() -> (tempfile::TempDir, Archive) {
        let dir = tempfile::tempdir().expect("tempdir");
        let archive = Archive::open(&ArchiveLocation::Local(dir.path().join("archive")))
            .expect("open archive");
        (dir, archive)
    }

    #[tokio::test]
    async fn archive_round_trip_equals_input() {
        let (_dir, archive) = archive();
        let mut rows: Vec<ArchiveRow> = (1..=5).map(|o| row(o * 10, "Account", T0 + o)).collect();
        rows[1].sealed = true;
        rows[1].payload = b"SFE1\x02k1\x00\xff\xfe sealed bytes".to_vec();
        rows[2].payload = Vec::new();
        rows[3].channel = "/data/ÄccountÜberChangeEvent".into();
        rows[3].event_key = "Açcount:名前:🚀".into();
        rows[3].payload = "Ünïcödé Bücher 名前 🚀".as_bytes().to_vec();
        rows[4].change_type = "GAP_OVERFLOW".into();
        rows[4].replay_id = Vec::new();
        let file = archive.write_file(&rows).await.expect("write");
        assert_eq!(
            file.path,
            "object=Account/date=2024-03-10/part-00000000000000000010-00000000000000000050.parquet"
        );
        assert_eq!(file.rows, 5);
        assert_eq!(file.object, "Account");
        assert_eq!(file.day, "2024-03-10");
        assert_eq!((file.min_offset, file.max_offset), (10, 50));
        assert_eq!((file.min_commit_ms, file.max_commit_ms), (T0 + 1, T0 + 5));
        assert_eq!(
            file.payload_bytes,
            rows.iter().map(|r| r.payload.len() as u64).sum::<u64>()
        );
        let on_disk = std::fs::read(archive_dir(&archive).join(&file.path)).expect("file");
        assert_eq!(file.bytes, on_disk.len() as u64);
        assert_eq!(file.sha256, hex::encode(Sha256::digest(&on_disk)));
        assert_eq!(archive.read_file(&file.path).await.expect("read"), rows);
        archive.verify_file(&file).await.expect("verify");
    }

    #[tokio::test]
    async fn archive_round_trip_spans_row_groups() {
        let (_dir, archive) = archive();
        let rows: Vec<ArchiveRow> = (1..=(ROW_GROUP_MAX_ROWS as i64 + 3))
            .map(|o| row(o, "Case", T0 + o))
            .collect();
        let file = archive.write_file(&rows).await.expect("write");
        let data =
            Bytes::from(std::fs::read(archive_dir(&archive).join(&file.path)).expect("file"));
        let builder = open_reader(data).map_err(|p| p.reason).expect("reader");
        assert_eq!(builder.metadata().num_row_groups(), 2);
        assert_eq!(archive.read_file(&file.path).await.expect("read"), rows);
    }

    #[tokio::test]
    async fn archive_multipart_upload_round_trip() {
        let (_dir, mut archive) = archive();
        archive.multipart_threshold_bytes = 64 << 10;
        archive.multipart_part_bytes = 16 << 10;
        let rows: Vec<ArchiveRow> = (1..=40)
            .map(|o| ArchiveRow {
                // Pseudo-random (xorshift), so the file stays well over the threshold.
                payload: {
                    let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ o as u64;
                    (0..4096)
                        .map(|_| {
                            x ^= x << 13;
                            x ^= x >> 7;
                            x ^= x << 17;
                            x as u8
                        })
                        .collect()
                },
                ..row(o, "Account", T0 + o)
            })
            .collect();
        let file = archive.write_file(&rows).await.expect("write");
        assert!(file.bytes > 2 * (64 << 10), "{} bytes", file.bytes);
        assert_eq!(archive.read_file(&file.path).await.expect("read"), rows);
        archive.verify_file(&file).await.expect("verify");
    }

    #[tokio::test]
    async fn archive_refuses_mixed_objects_days_and_order() {
        let (_dir, archive) = archive();
        let cases: Vec<(Vec<ArchiveRow>, &str)> = vec![
            (vec![], "no rows"),
            (
                vec![row(1, "Account", T0), row(2, "Case", T0)],
                "row 1 (offset 2) is of object 'Case' but row 0 of 'Account'",
            ),
            (
                vec![row(1, "Account", T0), row(2, "Account", T0 + DAY_MS)],
                "row 1 (offset 2) was committed on 2024-03-11 (UTC) but row 0 on 2024-03-10",
            ),
            (
                vec![row(5, "Account", T0), row(3, "Account", T0)],
                "row 1 has offset 3 after offset 5",
            ),
            (
                vec![row(5, "Account", T0), row(5, "Account", T0)],
                "row 1 has offset 5 after offset 5",
            ),
            (vec![row(1, "../etc", T0)], "is not a Salesforce API name"),
            (vec![row(-1, "Account", T0)], "negative offset"),
        ];
        for (rows, want) in cases {
            let err = archive.write_file(&rows).await.expect_err(want);
            assert_eq!(err.class(), ErrorClass::User, "{err}");
            assert!(err.to_string().contains(want), "{err} lacks {want:?}");
            assert!(err.to_string().contains("file://"), "{err} names no place");
        }
        assert!(archive.partitions().await.expect("partitions").is_empty());
    }

    #[tokio::test]
    async fn archive_manifest_lists_file_and_rewrite_replaces_entry() {
        let (_dir, archive) = archive();
        let rows: Vec<ArchiveRow> = (1..=3).map(|o| row(o, "Account", T0 + o)).collect();
        let first = archive.write_file(&rows).await.expect("write");
        let parts = archive.partitions().await.expect("partitions");
        assert_eq!(parts.len(), 1);
        assert_eq!(parts[0].files, vec![first.clone()]);

        let more: Vec<ArchiveRow> = (4..=6).map(|o| row(o, "Account", T0 + o)).collect();
        let second = archive.write_file(&more).await.expect("write");
        let again = archive.write_file(&rows).await.expect("rewrite");
        assert_eq!(again.path, first.path);
        assert_eq!(again.sha256, first.sha256);
        let parts = archive.partitions().await.expect("partitions");
        assert_eq!(parts.len(), 1);
        assert_eq!(parts[0].files, vec![again, second]);
        let manifest: serde_json::Value = serde_json::from_slice(
            &std::fs::read(
                archive_dir(&archive).join("object=Account/date=2024-03-10/_manifest.json"),
            )
            .expect("manifest"),
        )
        .expect("json");
        assert_eq!(manifest["object"], "Account");
        assert_eq!(manifest["day"], "2024-03-10");
        assert_eq!(manifest["files"].as_array().map(Vec::len), Some(2));
    }

    /// A file over entries an earlier, unrecorded attempt split differently supersedes the
    /// overlapping files: each entry is listed once, and the old file is gone.
    #[tokio::test]
    async fn archive_overlapping_rewrite_supersedes_the_old_files() {
        let (_dir, archive) = archive();
        let rows = |r: std::ops::RangeInclusive<i64>| -> Vec<ArchiveRow> {
            r.map(|o| row(o, "Account", T0 + o)).collect()
        };
        let a = archive.write_file(&rows(1..=3)).await.expect("write");
        let b = archive.write_file(&rows(4..=6)).await.expect("write");
        let c = archive.write_file(&rows(10..=11)).await.expect("write");
        let wide = archive.write_file(&rows(2..=8)).await.expect("write");
        let parts = archive.partitions().await.expect("partitions");
        assert_eq!(parts[0].files, vec![wide.clone(), c]);
        let dir = archive_dir(&archive);
        for gone in [&a, &b] {
            assert!(!dir.join(&gone.path).exists(), "{} is deleted", gone.path);
        }
        assert!(dir.join(&wide.path).exists());
    }

    #[tokio::test]
    async fn archive_write_error_leaves_manifest_unchanged() {
        let (_dir, archive) = archive();
        archive
            .write_file(&[row(1, "Account", T0)])
            .await
            .expect("write");
        let manifest = archive_dir(&archive).join("object=Account/date=2024-03-10/_manifest.json");
        std::fs::write(&manifest, b"{\"object\": \"Account\", trunc").expect("damage");
        let err = archive
            .write_file(&[row(2, "Account", T0 + 1)])
            .await
            .expect_err("damaged manifest");
        assert_eq!(err.class(), ErrorClass::Internal, "{err}");
        assert!(
            err.to_string().contains("_manifest.json"),
            "{}",
            err.chain()
        );
        assert_eq!(
            std::fs::read(&manifest).expect("manifest"),
            b"{\"object\": \"Account\", trunc"
        );
        assert!(archive.partitions().await.is_err());
    }

    #[tokio::test]
    async fn archive_verify_file_names_path_of_altered_file() {
        let (_dir, archive) = archive();
        let rows: Vec<ArchiveRow> = (1..=3).map(|o| row(o, "Account", T0 + o)).collect();
        let file = archive.write_file(&rows).await.expect("write");
        let on_disk = archive_dir(&archive).join(&file.path);
        let mut bytes = std::fs::read(&on_disk).expect("read");
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x5a;
        std::fs::write(&on_disk, &bytes).expect("alter");
        let err = archive.verify_file(&file).await.expect_err("altered");
        let text = err.to_string();
        assert!(text.contains(&file.path), "{text}");
        assert!(text.contains("sha256"), "{text}");
        assert_eq!(err.class(), ErrorClass::Internal);

        std::fs::remove_file(&on_disk).expect("remove");
        let err = archive.verify_file(&file).await.expect_err("missing");
        assert!(err.to_string().contains(&file.path), "{err}");
        assert!(err.to_string().contains("missing"), "{err}");
    }

    #[tokio::test]
    async fn archive_read_file_refuses_foreign_parquet() {
        let (_dir, archive) = archive();
        let schema = Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, false)]));
        let batch = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![Arc::new(Int64Array::from(vec![1i64, 2])) as ArrayRef],
        )
        .expect("batch");
        let mut writer = ArrowWriter::try_new(Vec::new(), schema, None).expect("writer");
        writer.write(&batch).expect("write");
        let data = writer.into_inner().expect("finish");
        std::fs::write(archive_dir(&archive).join("foreign.parquet"), data).expect("put");
        let err = archive
            .read_file("foreign.parquet")
            .await
            .expect_err("foreign");
        assert!(err.to_string().contains("foreign.parquet"), "{err}");
        assert!(
            err.to_string().contains("not an sfsync archive file"),
            "{err}"
        );
        let err = archive
            .read_file("nothing/here.parquet")
            .await
            .expect_err("missing");
        assert_eq!(err.class(), ErrorClass::User, "{err}");
    }

    #[tokio::test]
    async fn archive_delete_partition_removes_files_and_manifest() {
        let (_dir, archive) = archive();
        for o in [1, 4] {
            let rows: Vec<ArchiveRow> = (o..o + 3).map(|o| row(o, "Account", T0 + o)).collect();
            archive.write_file(&rows).await.expect("write");
        }
        archive
            .write_file(&[row(9, "Case", T0)])
            .await
            .expect("write");
        assert_eq!(
            archive
                .delete_partition("Account", "2024-03-10")
                .await
                .expect("delete"),
            2
        );
        let dir = archive_dir(&archive).join("object=Account/date=2024-03-10");
        assert!(!dir.join(MANIFEST_FILE).exists());
        assert!(
            !dir.exists() || std::fs::read_dir(&dir).expect("dir").next().is_none(),
            "files left in {}",
            dir.display()
        );
        let parts = archive.partitions().await.expect("partitions");
        assert_eq!(parts.len(), 1);
        assert_eq!(parts[0].object, "Case");
        assert_eq!(
            archive
                .delete_partition("Account", "2024-03-10")
                .await
                .expect("again"),
            0
        );
        let err = archive
            .delete_partition("Account", "2024-3-10")
            .await
            .expect_err("bad day");
        assert_eq!(err.class(), ErrorClass::User);
    }

    #[tokio::test]
    async fn archive_partitions_sorted() {
        let (_dir, archive) = archive();
        let mut offset = 0;
        for (object, day) in [("Case", 2), ("Account", 1), ("Case", 0), ("Account", 0)] {
            offset += 1;
            archive
                .write_file(&[row(offset, object, T0 + day * DAY_MS)])
                .await
                .expect("write");
        }
        let got: Vec<(String, String)> = archive
            .partitions()
            .await
            .expect("partitions")
            .into_iter()
            .map(|p| (p.object, p.day))
            .collect();
        let want = [
            ("Account", "2024-03-10"),
            ("Account", "2024-03-11"),
            ("Case", "2024-03-10"),
            ("Case", "2024-03-12"),
        ];
        assert_eq!(
            got,
            want.map(|(o, d)| (o.to_string(), d.to_string())).to_vec()
        );
    }

    #[test]
    fn archive_location_parse() {
        let local = |p: &str| ArchiveLocation::Local(PathBuf::from(p));
        let s3 = |b: &str, p: &str| ArchiveLocation::S3 {
            bucket: b.into(),
            prefix: p.into(),
        };
        assert_eq!(
            ArchiveLocation::parse("/var/archive"),
            Ok(local("/var/archive"))
        );
        assert_eq!(ArchiveLocation::parse("archive"), Ok(local("archive")));
        assert_eq!(ArchiveLocation::parse("file:///var/a"), Ok(local("/var/a")));
        assert_eq!(
            ArchiveLocation::parse("s3://my-bucket/raw/log/"),
            Ok(s3("my-bucket", "raw/log"))
        );
        assert_eq!(
            ArchiveLocation::parse("s3://my-bucket"),
            Ok(s3("my-bucket", ""))
        );
        assert_eq!(
            ArchiveLocation::parse("s3://my-bucket/"),
            Ok(s3("my-bucket", ""))
        );
        for (bad, why) in [
            ("", "empty"),
            ("  ", "empty"),
            ("s3://", "names no bucket"),
            ("s3:///prefix", "names no bucket"),
            ("s3://My_Bucket/x", "lower-case"),
            ("s3://b/a//c", "prefix"),
            ("file://host/x", "empty host"),
            ("gs://bucket/x", "scheme 'gs' is not supported"),
        ] {
            let err = ArchiveLocation::parse(bad).expect_err(bad);
            assert!(err.contains(why), "{bad:?}: {err}");
        }
        assert_eq!(s3("b", "p/q").to_string(), "s3://b/p/q");
    }

    #[test]
    fn archive_describe_is_a_file_url() {
        let (dir, archive) = archive();
        let abs = std::fs::canonicalize(dir.path().join("archive")).expect("abs");
        assert_eq!(archive.describe(), format!("file://{}", abs.display()));
        assert!(archive.describe().starts_with("file:///"));
    }

    #[test]
    fn archive_utc_day_matches_chrono() {
        assert_eq!(utc_day(0), "1970-01-01");
        assert_eq!(utc_day(-1), "1969-12-31");
        assert_eq!(utc_day(T0), "2024-03-10");
        assert_eq!(utc_day(T0 - 1), "2024-03-09");
        assert_eq!(utc_day(951_782_400_000), "2000-02-29");
        let mut ms = -62_167_219_200_000i64; // 0000-01-01
        while ms < 253_402_300_800_000 {
            // 10000-01-01
            let want = chrono::DateTime::from_timestamp_millis(ms)
                .expect("in range")
                .format("%Y-%m-%d")
                .to_string();
            assert_eq!(utc_day(ms), want, "{ms}");
            ms += 7_777_777_777; // ~90 days and a bit, lands on all times of day
        }
        assert!(!is_day(&utc_day(i64::MIN)));
        assert!(!is_day(&utc_day(i64::MAX)));
    }

    /// The archive's local directory (tests only).
    fn archive_dir(archive: &Archive) -> PathBuf {
        PathBuf::from(archive.describe().trim_start_matches("file://"))
    }
}
