//! The store's own scheduled jobs: **archive** (compaction of the applied raw change log into
//! Parquet files on the archive store, each verified before it counts, then pruning of the hot
//! log past its retention) and **retention** (archive partitions and audit entries past theirs).
//!
//! Both run as sync jobs (kinds `archive` and `retention`, object `*`) in a task beside the
//! applier, so streaming goes on meanwhile; both are idempotent, so a crash or a cancel at any
//! point is repaired by the next run: an archive file is named by its offset range (a rewrite
//! replaces it), the archived-through mark moves only after the files holding the entries were
//! written and read back, and deletions are bounded by what is archived and applied
//! (`sfsync_store::retention`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sfsync_store::archive::{utc_day, Archive, ArchiveFile, ArchiveRow};
use sfsync_store::{AuditPrune, LogPrune, Warehouse};

use crate::error::{PipelineError, Result};
use crate::CURATED_CONSUMER;

/// Settings of archive and retention.
#[derive(Clone)]
pub struct MaintenanceConfig {
    /// Where the archive lives (none: no archive, and the hot log is never pruned).
    pub archive: Option<Arc<Archive>>,
    /// How long raw-log entries stay in the hot log after their commit (they must also be
    /// archived and applied before they go).
    pub hot_retention: Duration,
    /// Archive partitions whose day is older than this are deleted by retention.
    pub archive_retention: Duration,
    /// Audit entries older than this are deleted by retention (the chain stays verifiable).
    pub audit_retention: Duration,
    /// How often an archive job is scheduled (none: only on request).
    pub archive_every: Option<Duration>,
    /// How often a retention job is scheduled (none: only on request).
    pub retention_every: Option<Duration>,
    /// Raw-log entries read per archive step (each step writes its files, verifies them and
    /// moves the mark).
    pub chunk_rows: usize,
}

/// Default hot-log retention: 7 days, beyond the 72-hour Pub/Sub replay window, so an event
/// Salesforce can still redeliver is still deduplicated against the hot log.
pub const DEFAULT_HOT_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);
/// Default archive retention: 13 months (396 days).
pub const DEFAULT_ARCHIVE_RETENTION: Duration = Duration::from_secs(396 * 24 * 3600);
/// Default audit retention: 7 years (2,557 days).
pub const DEFAULT_AUDIT_RETENTION: Duration = Duration::from_secs(2_557 * 24 * 3600);
/// Default archive interval.
pub const DEFAULT_ARCHIVE_EVERY: Duration = Duration::from_secs(3600);
/// Default retention interval.
pub const DEFAULT_RETENTION_EVERY: Duration = Duration::from_secs(24 * 3600);
/// Default raw-log entries per archive step (~100 MB of 3–8 KB payloads, held about twice while
/// a file is written and read back).
pub const DEFAULT_CHUNK_ROWS: usize = 20_000;

impl Default for MaintenanceConfig {
    fn default() -> Self {
        MaintenanceConfig {
            archive: None,
            hot_retention: DEFAULT_HOT_RETENTION,
            archive_retention: DEFAULT_ARCHIVE_RETENTION,
            audit_retention: DEFAULT_AUDIT_RETENTION,
            archive_every: Some(DEFAULT_ARCHIVE_EVERY),
            retention_every: Some(DEFAULT_RETENTION_EVERY),
            chunk_rows: DEFAULT_CHUNK_ROWS,
        }
    }
}

impl std::fmt::Debug for MaintenanceConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MaintenanceConfig")
            .field("archive", &self.archive.as_ref().map(|a| a.describe()))
            .field("hot_retention", &self.hot_retention)
            .field("archive_retention", &self.archive_retention)
            .field("audit_retention", &self.audit_retention)
            .field("archive_every", &self.archive_every)
            .field("retention_every", &self.retention_every)
            .field("chunk_rows", &self.chunk_rows)
            .finish()
    }
}

/// What an archive job did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchiveReport {
    /// The archive's location.
    pub archive: String,
    /// Raw-log entries archived by this job.
    pub rows: u64,
    /// Parquet files written (and verified).
    pub files: u64,
    /// Bytes of those files.
    pub bytes: u64,
    /// Bytes of the payloads they hold.
    pub payload_bytes: u64,
    /// Every entry at or below this offset is archived.
    pub archived_through: u64,
    /// The hot-log prune that followed.
    pub pruned: LogPrune,
    /// The partitions written to (`Object/YYYY-MM-DD`).
    pub partitions: Vec<String>,
}

/// What a retention job did (or, in a dry run, would do).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetentionReport {
    pub dry_run: bool,
    /// Archive partitions older than the cutoff day: deleted (would be).
    pub partitions: Vec<PartitionGone>,
    /// The first day kept in the archive.
    pub archive_keeps_from: String,
    /// Audit entries deleted (would be).
    pub audit: AuditPrune,
    /// Hot-log entries deleted (would be): archived, applied and past the hot retention.
    pub raw_log: LogPrune,
}

/// One archive partition retention deletes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionGone {
    pub object: String,
    pub day: String,
    pub files: u64,
    pub rows: u64,
    pub bytes: u64,
}

fn no_archive() -> PipelineError {
    PipelineError::config(
        "[archive]",
        "no archive is configured (set archive.location), so nothing is archived or pruned",
    )
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Archives every applied raw-log entry not yet archived, then prunes the hot log. `progress`
/// is told the rows archived so far after each step.
pub async fn run_archive(
    store: &dyn Warehouse,
    cfg: &MaintenanceConfig,
    now_ms: i64,
    mut progress: impl FnMut(&ArchiveReport),
) -> Result<ArchiveReport> {
    let archive = cfg.archive.as_ref().ok_or_else(no_archive)?;
    let mut report = ArchiveReport {
        archive: archive.describe(),
        ..Default::default()
    };
    let applied = store.applied_offset(CURATED_CONSUMER).await?.unwrap_or(0);
    let mut from = store.archived_through().await? + 1;
    report.archived_through = from - 1;
    let mut partitions = std::collections::BTreeSet::new();
    while from <= applied {
        let rows = store
            .archive_rows(from, applied, cfg.chunk_rows.max(1))
            .await?;
        let Some(last) = rows.last().map(|r| r.offset) else {
            break;
        };
        let mut groups: BTreeMap<(String, String), Vec<ArchiveRow>> = BTreeMap::new();
        for r in rows {
            groups
                .entry((r.entity.clone(), utc_day(r.commit_timestamp)))
                .or_default()
                .push(r);
        }
        let mut files: Vec<ArchiveFile> = Vec::with_capacity(groups.len());
        for ((object, day), rows) in groups {
            let f = archive.write_file(&rows).await?;
            report.rows += f.rows;
            report.bytes += f.bytes;
            report.payload_bytes += f.payload_bytes;
            partitions.insert(format!("{object}/{day}"));
            files.push(f);
        }
        let through = u64::try_from(last).unwrap_or(0);
        store.record_archived(&files, through).await?;
        report.files += files.len() as u64;
        report.archived_through = through;
        from = through + 1;
        progress(&report);
    }
    report.partitions = partitions.into_iter().collect();
    report.pruned = store
        .prune_raw_log(
            report.archived_through,
            now_ms.saturating_sub(ms(cfg.hot_retention)),
            false,
        )
        .await?;
    Ok(report)
}

/// Deletes (or with `dry_run` lists) archive partitions older than the archive retention,
/// audit entries older than the audit retention, and hot-log entries that are archived,
/// applied and older than the hot retention.
pub async fn run_retention(
    store: &dyn Warehouse,
    cfg: &MaintenanceConfig,
    now_ms: i64,
    dry_run: bool,
) -> Result<RetentionReport> {
    let keep_from = utc_day(now_ms.saturating_sub(ms(cfg.archive_retention)));
    let mut report = RetentionReport {
        dry_run,
        archive_keeps_from: keep_from.clone(),
        ..Default::default()
    };
    if let Some(archive) = &cfg.archive {
        for p in archive.partitions().await? {
            // Days are YYYY-MM-DD: text order is time order.
            if p.day >= keep_from {
                continue;
            }
            let gone = PartitionGone {
                object: p.object.clone(),
                day: p.day.clone(),
                files: p.files.len() as u64,
                rows: p.files.iter().map(|f| f.rows).sum(),
                bytes: p.files.iter().map(|f| f.bytes).sum(),
            };
            if !dry_run {
                archive.delete_partition(&p.object, &p.day).await?;
                store.forget_archive_partition(&p.object, &p.day).await?;
                tracing::info!(object = %p.object, day = %p.day, files = gone.files, rows = gone.rows, "Archive partition past its retention deleted.");
            }
            report.partitions.push(gone);
        }
    }
    report.audit = store
        .prune_audit(now_ms.saturating_sub(ms(cfg.audit_retention)), dry_run)
        .await?;
    if cfg.archive.is_some() {
        let through = store.archived_through().await?;
        report.raw_log = store
            .prune_raw_log(
                through,
                now_ms.saturating_sub(ms(cfg.hot_retention)),
                dry_run,
            )
            .await?;
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sfsync_core::{ChangeType, EventKey, RecordVersion, ReplayId};
    use sfsync_store::archive::{Archive, ArchiveLocation};
    use sfsync_store::{ChangeLog, RawChange, Retention, SqliteChangeLog};

    const DAY: i64 = 86_400_000;
    const NOW: i64 = 1_795_300_000_000; // 2026-11-21T21:46:40Z

    fn change(n: usize, entity: &str, commit_ms: i64) -> RawChange {
        RawChange {
            event_key: EventKey::new(&format!("tx-{n}"), 1, &format!("001{n:015}")),
            replay_id: ReplayId::from_bytes(vec![0, (n >> 8) as u8, n as u8]),
            schema_id: "schema-1".into(),
            entity: entity.into(),
            change_type: ChangeType::Update,
            version: RecordVersion {
                commit_timestamp: commit_ms,
                commit_number: n as i64,
                sequence_number: 1,
            },
            payload: format!("payload {n} {}", "x".repeat(n % 7))
                .into_bytes()
                .into(),
        }
    }

    struct Site {
        _dir: tempfile::TempDir,
        store: SqliteChangeLog,
        cfg: MaintenanceConfig,
        root: std::path::PathBuf,
    }

    /// A SQLite store with: 400 days ago 3 Account changes; 30 days ago 4 Account and 2 Case
    /// changes; now 3 Account changes (offsets 1..=12).
    async fn site(chunk_rows: usize) -> Site {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteChangeLog::open(dir.path().join("wh.db"))
            .await
            .unwrap();
        let mut changes: Vec<RawChange> = (1..=3)
            .map(|n| change(n, "Account", NOW - 400 * DAY))
            .collect();
        changes.extend((4..=7).map(|n| change(n, "Account", NOW - 30 * DAY)));
        changes.extend((8..=9).map(|n| change(n, "Case", NOW - 30 * DAY)));
        changes.extend((10..=12).map(|n| change(n, "Account", NOW)));
        store
            .append_batch(
                "/data/ChangeEvents",
                &changes,
                &ReplayId::from_bytes(vec![12]),
            )
            .await
            .unwrap();
        let root = dir.path().join("archive");
        let archive = Archive::open(&ArchiveLocation::Local(root.clone())).unwrap();
        let cfg = MaintenanceConfig {
            archive: Some(Arc::new(archive)),
            chunk_rows,
            ..Default::default()
        };
        Site {
            _dir: dir,
            store,
            cfg,
            root,
        }
    }

    async fn log_offsets(s: &SqliteChangeLog) -> Vec<u64> {
        s.read_from(0, usize::MAX)
            .await
            .unwrap()
            .iter()
            .map(|c| c.offset)
            .collect()
    }

    #[tokio::test]
    async fn archive_takes_applied_entries_only_and_round_trips_the_raw_log() {
        let s = site(4).await;
        let whole = s.store.archive_rows(1, 12, 100).await.unwrap();
        // Nothing applied yet: nothing is archived, nothing pruned.
        let r = run_archive(&s.store, &s.cfg, NOW, |_| {}).await.unwrap();
        assert_eq!((r.rows, r.files, r.pruned.entries), (0, 0, 0), "{r:?}");
        // Applied through 9: entries 1..=9 archived, in chunks of 4, by object and day.
        s.store
            .set_applied_offset(CURATED_CONSUMER, 9)
            .await
            .unwrap();
        let mut steps = Vec::new();
        let r = run_archive(&s.store, &s.cfg, NOW, |r| steps.push(r.archived_through))
            .await
            .unwrap();
        assert_eq!(steps, [4, 8, 9]);
        assert_eq!((r.rows, r.archived_through), (9, 9), "{r:?}");
        let day = |ms: i64| utc_day(ms);
        assert_eq!(
            r.partitions,
            [
                format!("Account/{}", day(NOW - 400 * DAY)),
                format!("Account/{}", day(NOW - 30 * DAY)),
                format!("Case/{}", day(NOW - 30 * DAY)),
            ]
        );
        // The archive holds exactly the raw log's entries 1..=9.
        let archive = s.cfg.archive.clone().unwrap();
        let mut archived: Vec<ArchiveRow> = Vec::new();
        for p in archive.partitions().await.unwrap() {
            for f in &p.files {
                archive.verify_file(f).await.unwrap();
                archived.extend(archive.read_file(&f.path).await.unwrap());
            }
        }
        archived.sort_by_key(|r| r.offset);
        assert_eq!(archived, whole[..9].to_vec());
        // The ledger has every file; the hot log lost the archived entries older than 7 days.
        let files = s.store.archive_files(100).await.unwrap();
        assert_eq!(files.len() as u64, r.files);
        assert_eq!((r.pruned.entries, r.pruned.through_offset), (9, Some(9)));
        assert_eq!(log_offsets(&s.store).await, [10, 11, 12]);
        // Applied through 12: the rest is archived but stays hot (committed now).
        s.store
            .set_applied_offset(CURATED_CONSUMER, 12)
            .await
            .unwrap();
        let r = run_archive(&s.store, &s.cfg, NOW, |_| {}).await.unwrap();
        assert_eq!((r.rows, r.archived_through, r.pruned.entries), (3, 12, 0));
        assert_eq!(log_offsets(&s.store).await, [10, 11, 12]);
        // Run again: nothing new, nothing written twice.
        let r = run_archive(&s.store, &s.cfg, NOW, |_| {}).await.unwrap();
        assert_eq!((r.rows, r.files), (0, 0));
        assert!(s.root.join("object=Account").is_dir());
    }

    #[tokio::test]
    async fn retention_deletes_old_partitions_only_and_a_dry_run_nothing() {
        let s = site(100).await;
        s.store
            .set_applied_offset(CURATED_CONSUMER, 12)
            .await
            .unwrap();
        run_archive(&s.store, &s.cfg, NOW, |_| {}).await.unwrap();
        let archive = s.cfg.archive.clone().unwrap();
        let before = archive.partitions().await.unwrap().len();
        assert_eq!(before, 4);
        let dry = run_retention(&s.store, &s.cfg, NOW, true).await.unwrap();
        assert!(dry.dry_run);
        assert_eq!(
            dry.partitions
                .iter()
                .map(|p| (p.object.as_str(), p.rows))
                .collect::<Vec<_>>(),
            [("Account", 3)],
            "only the 400-day-old partition is past 396 days"
        );
        assert_eq!(archive.partitions().await.unwrap().len(), before);
        let r = run_retention(&s.store, &s.cfg, NOW, false).await.unwrap();
        assert_eq!(r.partitions, dry.partitions);
        let left: Vec<String> = archive
            .partitions()
            .await
            .unwrap()
            .iter()
            .map(|p| format!("{}/{}", p.object, p.day))
            .collect();
        assert_eq!(left.len(), 3);
        assert!(!left.contains(&format!("Account/{}", utc_day(NOW - 400 * DAY))));
        assert_eq!(s.store.archive_files(100).await.unwrap().len(), 3);
    }

    #[tokio::test]
    async fn without_an_archive_nothing_is_archived_or_pruned() {
        let mut s = site(100).await;
        s.cfg.archive = None;
        s.store
            .set_applied_offset(CURATED_CONSUMER, 12)
            .await
            .unwrap();
        let e = run_archive(&s.store, &s.cfg, NOW, |_| {})
            .await
            .unwrap_err();
        assert!(e.to_string().contains("no archive is configured"), "{e}");
        let r = run_retention(&s.store, &s.cfg, NOW, false).await.unwrap();
        assert_eq!(r.raw_log.entries, 0);
        assert_eq!(log_offsets(&s.store).await.len(), 12);
    }
}
