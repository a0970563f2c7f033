//! SQLite backend: WAL-mode database files, each writer connection serialised behind a mutex and
//! driven from tokio's blocking pool.
//!
//! Layout: a new store keeps the raw change log (`raw_changes` and `checkpoints`) in its own file
//! beside the warehouse, `<name>.changes.<ext>` (see
//! [`change_log_path`]), and everything else (curated tables, apply offsets, audit, runs, …) in
//! the warehouse file, dead letters of both stages included (ingest writes its dead letters to
//! the warehouse just before the append that moves the checkpoint past them, skipping any
//! already there, so a crash in between neither loses nor doubles one). SQLite allows one writer per file, so ingest appends and apply commits
//! then run in parallel instead of taking turns (measured on the pipeline bench: the single
//! file's write lock was busy ~85 % of the time and capped throughput). Both files carry the same
//! migrations, so the tables the other file owns exist but stay empty. A store created before
//! the split (its file has migrations and no `.changes` file beside it) keeps the single-file
//! layout; [`SqliteOptions::separate_change_log`] chooses the layout of a new store.
//!
//! Durability: `synchronous=NORMAL` by default. In WAL mode a process crash (SIGKILL, panic)
//! never loses a committed transaction; a power loss or OS crash can lose the last few commits,
//! but whole transactions only — the checkpoint rolls back together with the events it covers,
//! so the source simply redelivers them from the older replay id (within Salesforce's retention)
//! and nothing is lost or duplicated. `FULL` (fsync on every commit) closes that window too, at a
//! large cost in commits/s; choose it with [`SqliteOptions::synchronous`] when the replay window
//! cannot be relied on.
//!
//! With two files a power loss can also roll the change log back further than the warehouse:
//! the apply offset then points past the log's end. On open the log's offset sequence is moved
//! past every apply offset, so the redelivered changes get new, higher offsets and are applied
//! again — as no-ops where the warehouse already has them (per-record versions) — and no
//! change can hide under an offset that was applied before the loss.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use parking_lot::Mutex;
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use sfsync_core::{ChangeType, RecordVersion, ReplayId};

use crate::curated::DeadLetter;
use crate::error::{Result, StoreError};
use crate::migrate::{self, AppliedMigration, Migration};
use crate::pii::Keyring;
use crate::tail::{TailCache, DEFAULT_TAIL_BYTES};
use crate::warehouse::{self as wh, Ctx, Dialect, Registry};
use crate::{
    now_ms, AppendOutcome, ChangeLog, LogMark, LogOffset, LogPoint, LoggedChange, RawChange,
};

mod delivery;
mod events;
mod jobs;
mod lease;
mod operator;
mod outbound;
mod quality;
mod query;
mod retention;
mod sync_status;
mod warehouse;
mod writeback;

const BACKEND: &str = "sqlite";

/// Offsets per `IN (…)` list (SQLite's parameter limit is 32,766; keep statements small).
const OFFSETS_CHUNK: usize = 500;

/// The SQLite schema, in order. Never edit a released entry; append a new one.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "raw change log, checkpoints, apply offsets",
        sql: r#"
CREATE TABLE raw_changes (
    log_offset       INTEGER PRIMARY KEY AUTOINCREMENT,
    channel          TEXT    NOT NULL CHECK (channel <> ''),
    event_key        TEXT    NOT NULL UNIQUE CHECK (event_key <> ''),
    replay_id        BLOB    NOT NULL,
    schema_id        TEXT    NOT NULL,
    entity           TEXT    NOT NULL CHECK (entity <> ''),
    change_type      TEXT    NOT NULL CHECK (change_type IN ('CREATE','UPDATE','DELETE',
                         'UNDELETE','GAP_CREATE','GAP_UPDATE','GAP_DELETE','GAP_UNDELETE',
                         'GAP_OVERFLOW')),
    commit_timestamp INTEGER NOT NULL,
    commit_number    INTEGER NOT NULL,
    sequence_number  INTEGER NOT NULL,
    payload          BLOB    NOT NULL,
    appended_at_ms   INTEGER NOT NULL
);
CREATE TABLE checkpoints (
    channel       TEXT    PRIMARY KEY CHECK (channel <> ''),
    replay_id     BLOB    NOT NULL,
    updated_at_ms INTEGER NOT NULL
);
CREATE TABLE apply_offsets (
    consumer      TEXT    PRIMARY KEY CHECK (consumer <> ''),
    log_offset    INTEGER NOT NULL CHECK (log_offset >= 0),
    updated_at_ms INTEGER NOT NULL
);
"#,
    },
    Migration {
        version: 2,
        name:
            "warehouse bookkeeping: schemas, repairs, re-syncs, dead letters, audit, runs, models",
        sql: r#"
CREATE TABLE schemas (
    schema_id    TEXT    PRIMARY KEY CHECK (schema_id <> ''),
    json         TEXT    NOT NULL,
    stored_at_ms INTEGER NOT NULL
);
CREATE TABLE repair_requests (
    id                  INTEGER PRIMARY KEY AUTOINCREMENT,
    object              TEXT    NOT NULL CHECK (object <> ''),
    record_ids          TEXT    NOT NULL,
    reason              TEXT    NOT NULL,
    event_key           TEXT    NOT NULL,
    commit_timestamp_ms INTEGER NOT NULL,
    status              TEXT    NOT NULL CHECK (status IN ('pending','done')),
    created_at_ms       INTEGER NOT NULL,
    done_at_ms          INTEGER
);
CREATE INDEX repair_requests_status ON repair_requests (status, id);
CREATE TABLE resync_requests (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    object        TEXT    NOT NULL,
    channel       TEXT    NOT NULL,
    from_ms       INTEGER NOT NULL,
    reason        TEXT    NOT NULL,
    event_key     TEXT,
    status        TEXT    NOT NULL CHECK (status <> ''),
    created_at_ms INTEGER NOT NULL
);
CREATE TABLE dead_letters (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    channel       TEXT    NOT NULL,
    replay_id     BLOB,
    schema_id     TEXT    NOT NULL,
    stage         TEXT    NOT NULL,
    error         TEXT    NOT NULL,
    object        TEXT,
    payload       BLOB    NOT NULL,
    created_at_ms INTEGER NOT NULL
);
CREATE TABLE audit_log (
    seq           INTEGER PRIMARY KEY,
    object        TEXT    NOT NULL,
    record_id     TEXT    NOT NULL,
    change_type   TEXT    NOT NULL,
    event_key     TEXT    NOT NULL,
    entry         TEXT    NOT NULL,
    sealed        TEXT,
    prev_hash     TEXT    NOT NULL,
    hash          TEXT    NOT NULL,
    created_at_ms INTEGER NOT NULL
);
CREATE TABLE runs (
    run_id        TEXT    PRIMARY KEY CHECK (run_id <> ''),
    kind          TEXT    NOT NULL,
    status        TEXT    NOT NULL,
    started_at_ms INTEGER NOT NULL,
    ended_at_ms   INTEGER,
    detail        TEXT    NOT NULL
);
CREATE INDEX runs_started ON runs (started_at_ms);
CREATE TABLE curated_models (
    object        TEXT    PRIMARY KEY CHECK (object <> ''),
    model         TEXT    NOT NULL,
    updated_at_ms INTEGER NOT NULL
);
CREATE INDEX raw_changes_entity ON raw_changes (entity, log_offset);
"#,
    },
    Migration {
        version: 3,
        name: "audit trail without values: drop audit_log.sealed",
        sql: r#"
ALTER TABLE audit_log DROP COLUMN sealed;
"#,
    },
    Migration {
        version: 4,
        name: "raw change log deduplicated on (commit_timestamp, event_key)",
        // Event keys start with the transaction key, which is random: a unique index on the key
        // alone puts each appended change on a random index page of an ever-growing index
        // (at 150k changes the bench's bytes written per event did not move measurably; the
        // index is small next to 3-8 KB rows, but it grows with the 13-month log). A change's
        // commit timestamp is part of its identity (a
        // redelivery carries the same header), so leading with it dedupes exactly the same
        // changes while appends land at the end of the index. SQLite cannot drop a column
        // constraint, hence the rebuild; the AUTOINCREMENT high-water mark is carried over.
        sql: r#"
CREATE TABLE raw_changes_v4 (
    log_offset       INTEGER PRIMARY KEY AUTOINCREMENT,
    channel          TEXT    NOT NULL CHECK (channel <> ''),
    event_key        TEXT    NOT NULL CHECK (event_key <> ''),
    replay_id        BLOB    NOT NULL,
    schema_id        TEXT    NOT NULL,
    entity           TEXT    NOT NULL CHECK (entity <> ''),
    change_type      TEXT    NOT NULL CHECK (change_type IN ('CREATE','UPDATE','DELETE',
                         'UNDELETE','GAP_CREATE','GAP_UPDATE','GAP_DELETE','GAP_UNDELETE',
                         'GAP_OVERFLOW')),
    commit_timestamp INTEGER NOT NULL,
    commit_number    INTEGER NOT NULL,
    sequence_number  INTEGER NOT NULL,
    payload          BLOB    NOT NULL,
    appended_at_ms   INTEGER NOT NULL
);
INSERT INTO raw_changes_v4 SELECT log_offset, channel, event_key, replay_id, schema_id, entity,
    change_type, commit_timestamp, commit_number, sequence_number, payload, appended_at_ms
    FROM raw_changes ORDER BY log_offset;
INSERT INTO sqlite_sequence (name, seq)
    SELECT 'raw_changes_v4', seq FROM sqlite_sequence WHERE name = 'raw_changes'
    AND NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = 'raw_changes_v4');
UPDATE sqlite_sequence SET seq = max(seq,
    (SELECT coalesce(max(seq), 0) FROM sqlite_sequence WHERE name = 'raw_changes'))
    WHERE name = 'raw_changes_v4';
DROP TABLE raw_changes;
ALTER TABLE raw_changes_v4 RENAME TO raw_changes;
CREATE UNIQUE INDEX raw_changes_event ON raw_changes (commit_timestamp, event_key);
CREATE INDEX raw_changes_entity ON raw_changes (entity, log_offset);
"#,
    },
    Migration {
        version: 5,
        name: "dead letters found by (channel, replay id)",
        sql: r#"
CREATE INDEX dead_letters_replay ON dead_letters (channel, replay_id);
"#,
    },
    Migration {
        version: 6,
        name: "data quality: quarantine, failure counts and samples",
        sql: r#"
CREATE TABLE quarantine (
    id                  INTEGER PRIMARY KEY AUTOINCREMENT,
    object              TEXT    NOT NULL CHECK (object <> ''),
    record_id           TEXT    NOT NULL,
    rule                TEXT    NOT NULL,
    reason              TEXT    NOT NULL,
    parent_object       TEXT,
    parent_id           TEXT,
    event_key           TEXT    NOT NULL,
    log_offset          INTEGER,
    commit_timestamp_ms INTEGER NOT NULL,
    change              BLOB,
    status              TEXT    NOT NULL CHECK (status IN ('held','release_requested',
                            'force_requested','released','discarded')),
    run_id              TEXT    NOT NULL,
    first_seen_ms       INTEGER NOT NULL,
    last_seen_ms        INTEGER NOT NULL,
    attempts            INTEGER NOT NULL,
    alert_after_ms      INTEGER,
    alerted_at_ms       INTEGER,
    resolved_at_ms      INTEGER,
    resolved_by         TEXT,
    note                TEXT,
    CHECK (change IS NOT NULL OR log_offset IS NOT NULL)
);
CREATE INDEX quarantine_record ON quarantine (object, record_id, status);
CREATE INDEX quarantine_parent ON quarantine (parent_object, parent_id, status);
CREATE INDEX quarantine_status ON quarantine (status, id);
CREATE TABLE dq_failures (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id        TEXT    NOT NULL,
    object        TEXT    NOT NULL,
    record_id     TEXT    NOT NULL,
    rule          TEXT    NOT NULL,
    severity      TEXT    NOT NULL CHECK (severity IN ('error','warn')),
    field         TEXT    NOT NULL,
    value         TEXT,
    message       TEXT    NOT NULL,
    event_key     TEXT    NOT NULL,
    created_at_ms INTEGER NOT NULL
);
CREATE INDEX dq_failures_run ON dq_failures (run_id, id);
CREATE TABLE dq_counts (
    run_id     TEXT    NOT NULL,
    object     TEXT    NOT NULL,
    rule       TEXT    NOT NULL,
    severity   TEXT    NOT NULL CHECK (severity IN ('error','warn')),
    failed     INTEGER NOT NULL,
    stored     INTEGER NOT NULL,
    over_cap   INTEGER NOT NULL,
    last_at_ms INTEGER NOT NULL,
    PRIMARY KEY (run_id, object, rule)
);
"#,
    },
    Migration {
        version: 7,
        name: "sync jobs: backfills, re-syncs, reconciliations, replays",
        sql: r#"
CREATE TABLE sync_jobs (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    kind            TEXT    NOT NULL CHECK (kind IN ('backfill','resync','reconcile','replay')),
    object          TEXT    NOT NULL CHECK (object <> ''),
    reason          TEXT    NOT NULL,
    status          TEXT    NOT NULL CHECK (status IN ('pending','running','succeeded','failed',
                        'cancelled')),
    since_ms        INTEGER,
    until_ms        INTEGER,
    params          TEXT    NOT NULL,
    requested_by    TEXT    NOT NULL,
    resync_id       INTEGER,
    run_id          TEXT,
    bulk_job_id     TEXT,
    locator         TEXT,
    page_rows_done  INTEGER NOT NULL DEFAULT 0,
    rows_total      INTEGER,
    rows_read       INTEGER NOT NULL DEFAULT 0,
    rows_applied    INTEGER NOT NULL DEFAULT 0,
    rows_skipped    INTEGER NOT NULL DEFAULT 0,
    rows_held       INTEGER NOT NULL DEFAULT 0,
    rows_deleted    INTEGER NOT NULL DEFAULT 0,
    rows_failed     INTEGER NOT NULL DEFAULT 0,
    api_calls       INTEGER NOT NULL DEFAULT 0,
    requested_at_ms INTEGER NOT NULL,
    started_at_ms   INTEGER,
    finished_at_ms  INTEGER,
    error           TEXT,
    report          TEXT
);
CREATE INDEX sync_jobs_status ON sync_jobs (status, id);
CREATE INDEX sync_jobs_object ON sync_jobs (object, kind, id);
"#,
    },
    Migration {
        version: 8,
        name: "sync jobs: formula_refresh kind, watermark and re-read point",
        // SQLite cannot change a CHECK constraint in place, hence the rebuild (as in migration
        // 4); ids and the AUTOINCREMENT high-water mark are carried over, so job ids are never
        // reused.
        sql: r#"
CREATE TABLE sync_jobs_v8 (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    kind            TEXT    NOT NULL CHECK (kind IN ('backfill','resync','reconcile','replay',
                        'formula_refresh')),
    object          TEXT    NOT NULL CHECK (object <> ''),
    reason          TEXT    NOT NULL,
    status          TEXT    NOT NULL CHECK (status IN ('pending','running','succeeded','failed',
                        'cancelled')),
    since_ms        INTEGER,
    until_ms        INTEGER,
    params          TEXT    NOT NULL,
    requested_by    TEXT    NOT NULL,
    resync_id       INTEGER,
    run_id          TEXT,
    bulk_job_id     TEXT,
    locator         TEXT,
    page_rows_done  INTEGER NOT NULL DEFAULT 0,
    rows_total      INTEGER,
    rows_read       INTEGER NOT NULL DEFAULT 0,
    rows_applied    INTEGER NOT NULL DEFAULT 0,
    rows_skipped    INTEGER NOT NULL DEFAULT 0,
    rows_held       INTEGER NOT NULL DEFAULT 0,
    rows_deleted    INTEGER NOT NULL DEFAULT 0,
    rows_failed     INTEGER NOT NULL DEFAULT 0,
    api_calls       INTEGER NOT NULL DEFAULT 0,
    requested_at_ms INTEGER NOT NULL,
    started_at_ms   INTEGER,
    finished_at_ms  INTEGER,
    error           TEXT,
    report          TEXT,
    watermark_ms    INTEGER,
    reread_from_ms  INTEGER
);
INSERT INTO sync_jobs_v8 (id, kind, object, reason, status, since_ms, until_ms, params,
    requested_by, resync_id, run_id, bulk_job_id, locator, page_rows_done, rows_total, rows_read,
    rows_applied, rows_skipped, rows_held, rows_deleted, rows_failed, api_calls, requested_at_ms,
    started_at_ms, finished_at_ms, error, report)
    SELECT id, kind, object, reason, status, since_ms, until_ms, params, requested_by, resync_id,
        run_id, bulk_job_id, locator, page_rows_done, rows_total, rows_read, rows_applied,
        rows_skipped, rows_held, rows_deleted, rows_failed, api_calls, requested_at_ms,
        started_at_ms, finished_at_ms, error, report
    FROM sync_jobs ORDER BY id;
INSERT INTO sqlite_sequence (name, seq)
    SELECT 'sync_jobs_v8', seq FROM sqlite_sequence WHERE name = 'sync_jobs'
    AND NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = 'sync_jobs_v8');
UPDATE sqlite_sequence SET seq = max(seq,
    (SELECT coalesce(max(seq), 0) FROM sqlite_sequence WHERE name = 'sync_jobs'))
    WHERE name = 'sync_jobs_v8';
DROP TABLE sync_jobs;
ALTER TABLE sync_jobs_v8 RENAME TO sync_jobs;
CREATE INDEX sync_jobs_status ON sync_jobs (status, id);
CREATE INDEX sync_jobs_object ON sync_jobs (object, kind, id);
"#,
    },
    Migration {
        version: 9,
        name: "writeback: outbox, write ledger and its transitions",
        // `outbox` is the table other systems INSERT into: only the two key columns are
        // required, everything else is checked when the row is ingested (a bad row becomes a
        // rejected write naming the column, never a failed INSERT that loses it).
        sql: r#"
CREATE TABLE outbox (
    id                INTEGER PRIMARY KEY AUTOINCREMENT,
    source_system     TEXT    NOT NULL CHECK (source_system <> ''),
    idempotency_key   TEXT    NOT NULL CHECK (idempotency_key <> ''),
    object            TEXT,
    external_id_field TEXT,
    external_id       TEXT,
    record_id         TEXT,
    fields            TEXT,
    seen_version_ms   INTEGER,
    created_at_ms     INTEGER NOT NULL
        DEFAULT (CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)),
    ingested_at_ms    INTEGER,
    write_id          INTEGER,
    UNIQUE (source_system, idempotency_key)
);
CREATE INDEX outbox_waiting ON outbox (id) WHERE ingested_at_ms IS NULL;
CREATE TABLE writes (
    id                INTEGER PRIMARY KEY AUTOINCREMENT,
    source_system     TEXT    NOT NULL,
    idempotency_key   TEXT    NOT NULL,
    origin            TEXT    NOT NULL CHECK (origin IN ('api','outbox')),
    outbox_id         INTEGER,
    object            TEXT    NOT NULL,
    external_id_field TEXT,
    external_id       TEXT,
    record_id         TEXT,
    fields            TEXT    NOT NULL,
    seen_version_ms   INTEGER,
    state             TEXT    NOT NULL CHECK (state IN ('pending','sent','applied','confirmed',
                          'conflict','rejected','failed')),
    attempts          INTEGER NOT NULL DEFAULT 0,
    last_error        TEXT,
    reason            TEXT,
    claimed_by        TEXT,
    echo_event_key    TEXT,
    created_at_ms     INTEGER NOT NULL,
    updated_at_ms     INTEGER NOT NULL,
    UNIQUE (source_system, idempotency_key)
);
CREATE INDEX writes_state ON writes (state, object, id);
CREATE INDEX writes_record ON writes (object, record_id, state);
CREATE TABLE write_transitions (
    write_id   INTEGER NOT NULL,
    seq        INTEGER NOT NULL,
    from_state TEXT,
    to_state   TEXT    NOT NULL,
    at_ms      INTEGER NOT NULL,
    detail     TEXT,
    PRIMARY KEY (write_id, seq)
);
"#,
    },
    Migration {
        version: 10,
        name: "writeback: who made a write's transition and why (operator actions)",
        sql: r#"
ALTER TABLE write_transitions ADD COLUMN actor TEXT;
ALTER TABLE write_transitions ADD COLUMN note TEXT;
"#,
    },
    Migration {
        version: 11,
        name: "sync jobs: attempts (an operator's retry starts a new one)",
        sql: r#"
ALTER TABLE sync_jobs ADD COLUMN attempts INTEGER NOT NULL DEFAULT 1;
ALTER TABLE sync_jobs ADD COLUMN previous_attempts TEXT;
"#,
    },
    Migration {
        version: 12,
        name: "operator actions: hash-chained audit of what operators did through the API",
        // The chain works like audit_log: hash = SHA-256(prev_hash bytes, entry text); the
        // plain columns repeat the entry's who/what/target/when for queries and are checked
        // against the hashed entry by verification.
        sql: r#"
CREATE TABLE operator_actions (
    seq       INTEGER  PRIMARY KEY,
    actor     TEXT    NOT NULL,
    action    TEXT    NOT NULL,
    target    TEXT    NOT NULL,
    at_ms     INTEGER  NOT NULL,
    entry     TEXT    NOT NULL,
    prev_hash TEXT    NOT NULL,
    hash      TEXT    NOT NULL
);
"#,
    },
    Migration {
        version: 13,
        name: "writeback: pending writes in acceptance order (the deliverer's claims)",
        sql: "CREATE INDEX writes_pending ON writes (state, id);",
    },
    Migration {
        version: 14,
        name: "sync jobs: per-slice state of large backfills and re-syncs",
        sql: "ALTER TABLE sync_jobs ADD COLUMN slices TEXT;",
    },
    Migration {
        version: 15,
        name: "archive and retention: job kinds, archived files, audit chain anchor",
        // The sync_jobs rebuild widens the kind CHECK (as migration 8 did); every column and
        // the AUTOINCREMENT high-water mark are carried over.
        sql: r#"
CREATE TABLE sync_jobs_v15 (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    kind            TEXT    NOT NULL CHECK (kind IN ('backfill','resync','reconcile','replay',
                        'formula_refresh','archive','retention')),
    object          TEXT    NOT NULL CHECK (object <> ''),
    reason          TEXT    NOT NULL,
    status          TEXT    NOT NULL CHECK (status IN ('pending','running','succeeded','failed',
                        'cancelled')),
    since_ms        INTEGER,
    until_ms        INTEGER,
    params          TEXT    NOT NULL,
    requested_by    TEXT    NOT NULL,
    resync_id       INTEGER,
    run_id          TEXT,
    bulk_job_id     TEXT,
    locator         TEXT,
    page_rows_done  INTEGER NOT NULL DEFAULT 0,
    rows_total      INTEGER,
    rows_read       INTEGER NOT NULL DEFAULT 0,
    rows_applied    INTEGER NOT NULL DEFAULT 0,
    rows_skipped    INTEGER NOT NULL DEFAULT 0,
    rows_held       INTEGER NOT NULL DEFAULT 0,
    rows_deleted    INTEGER NOT NULL DEFAULT 0,
    rows_failed     INTEGER NOT NULL DEFAULT 0,
    api_calls       INTEGER NOT NULL DEFAULT 0,
    requested_at_ms INTEGER NOT NULL,
    started_at_ms   INTEGER,
    finished_at_ms  INTEGER,
    error           TEXT,
    report          TEXT,
    watermark_ms    INTEGER,
    reread_from_ms  INTEGER,
    attempts        INTEGER NOT NULL DEFAULT 1,
    previous_attempts TEXT,
    slices          TEXT
);
INSERT INTO sync_jobs_v15 SELECT id, kind, object, reason, status, since_ms, until_ms, params,
    requested_by, resync_id, run_id, bulk_job_id, locator, page_rows_done, rows_total, rows_read,
    rows_applied, rows_skipped, rows_held, rows_deleted, rows_failed, api_calls, requested_at_ms,
    started_at_ms, finished_at_ms, error, report, watermark_ms, reread_from_ms, attempts,
    previous_attempts, slices
    FROM sync_jobs ORDER BY id;
INSERT INTO sqlite_sequence (name, seq)
    SELECT 'sync_jobs_v15', seq FROM sqlite_sequence WHERE name = 'sync_jobs'
    AND NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = 'sync_jobs_v15');
UPDATE sqlite_sequence SET seq = max(seq,
    (SELECT coalesce(max(seq), 0) FROM sqlite_sequence WHERE name = 'sync_jobs'))
    WHERE name = 'sync_jobs_v15';
DROP TABLE sync_jobs;
ALTER TABLE sync_jobs_v15 RENAME TO sync_jobs;
CREATE INDEX sync_jobs_status ON sync_jobs (status, id);
CREATE INDEX sync_jobs_object ON sync_jobs (object, kind, id);
CREATE TABLE archive_files (
    path          TEXT    PRIMARY KEY,
    object        TEXT    NOT NULL,
    day           TEXT    NOT NULL,
    rows          INTEGER NOT NULL,
    bytes         INTEGER NOT NULL,
    payload_bytes INTEGER NOT NULL,
    sha256        TEXT    NOT NULL,
    min_offset    INTEGER NOT NULL,
    max_offset    INTEGER NOT NULL,
    min_commit_ms INTEGER NOT NULL,
    max_commit_ms INTEGER NOT NULL,
    created_at_ms INTEGER NOT NULL
);
CREATE INDEX archive_files_partition ON archive_files (object, day);
CREATE TABLE archive_marks (
    id               INTEGER PRIMARY KEY CHECK (id = 1),
    archived_through INTEGER NOT NULL,
    updated_at_ms    INTEGER NOT NULL
);
CREATE TABLE audit_anchor (
    id             INTEGER PRIMARY KEY CHECK (id = 1),
    seq            INTEGER NOT NULL,
    hash           TEXT    NOT NULL,
    pruned_entries INTEGER NOT NULL,
    pruned_at_ms   INTEGER NOT NULL
);
"#,
    },
    Migration {
        version: 16,
        name: "freshness contract: sync_status_state and the sync_status view",
        // Timestamps as the curated tables' `_sf_*` metadata (RFC 3339 UTC text with
        // milliseconds). The view uses julianday(), which every SQLite reads the same way (a
        // downstream job may read the view with an older sqlite3 than sfsync's own library).
        sql: r#"
CREATE TABLE sync_status_state (
    object                TEXT    PRIMARY KEY CHECK (object <> ''),
    last_commit_at        TEXT,
    last_applied_at       TEXT,
    current_as_of         TEXT,
    open_repairs          INTEGER NOT NULL DEFAULT 0 CHECK (open_repairs >= 0),
    open_resyncs          INTEGER NOT NULL DEFAULT 0 CHECK (open_resyncs >= 0),
    backfill_running      INTEGER NOT NULL DEFAULT 0 CHECK (backfill_running IN (0, 1)),
    last_reconcile_at     TEXT,
    last_reconcile_result TEXT    CHECK (last_reconcile_result IN ('in_sync','drift','repaired',
                              'failed')),
    last_reconcile_detail TEXT,
    delayed_after_secs    INTEGER NOT NULL CHECK (delayed_after_secs > 0),
    updated_at            TEXT    NOT NULL
);
CREATE VIEW sync_status AS
SELECT object, last_commit_at, last_applied_at, current_as_of, open_repairs, open_resyncs,
    backfill_running, last_reconcile_at, last_reconcile_result, last_reconcile_detail,
    delayed_after_secs, updated_at, lag_seconds,
    CASE WHEN is_partial THEN 'partial'
         WHEN lag_seconds IS NULL OR lag_seconds > delayed_after_secs THEN 'delayed'
         ELSE 'current' END AS status,
    rtrim(
        CASE WHEN open_repairs > 0 THEN open_repairs || ' open repair(s); ' ELSE '' END ||
        CASE WHEN open_resyncs > 0 THEN open_resyncs || ' open re-sync(s); ' ELSE '' END ||
        CASE WHEN backfill_running <> 0 THEN 'a backfill is pending or running; ' ELSE '' END ||
        CASE WHEN last_reconcile_result = 'drift'
            THEN 'the last reconciliation found drift not repaired yet ('
                || coalesce(last_reconcile_detail, '') || '); '
            ELSE '' END ||
        CASE WHEN lag_seconds IS NULL THEN 'not yet caught up with the stream'
            WHEN lag_seconds > delayed_after_secs THEN 'not current for '
                || CAST(round(lag_seconds) AS INTEGER) || ' s (delayed after '
                || delayed_after_secs || ' s)'
            WHEN is_partial THEN ''
            ELSE 'caught up as of ' || CAST(round(lag_seconds) AS INTEGER) || ' s ago (delayed after '
                || delayed_after_secs || ' s)' END,
        '; ') AS status_reason
FROM (SELECT *,
        max(0.0, round((julianday('now') - julianday(current_as_of)) * 86400.0, 3))
            AS lag_seconds,
        (open_repairs > 0 OR open_resyncs > 0 OR backfill_running <> 0
            OR coalesce(last_reconcile_result = 'drift', 0)) AS is_partial
      FROM sync_status_state);
"#,
    },
    Migration {
        version: 17,
        name: "delivery outbox, sink positions and delivery dead letters",
        sql: r#"
CREATE TABLE delivery_outbox (
    seq                 INTEGER PRIMARY KEY AUTOINCREMENT,
    object              TEXT NOT NULL,
    record_id           TEXT NOT NULL,
    change_type         TEXT NOT NULL,
    event_key           TEXT NOT NULL,
    commit_timestamp_ms INTEGER NOT NULL,
    applied_at_ms       INTEGER NOT NULL,
    source              TEXT NOT NULL,
    origin_client       TEXT,
    fields              TEXT NOT NULL,
    deleted             BOOLEAN NOT NULL,
    record              TEXT NOT NULL,
    run_id              TEXT NOT NULL
);
CREATE INDEX delivery_outbox_object ON delivery_outbox (object, seq);
CREATE TABLE delivery_positions (
    sink          TEXT NOT NULL,
    object        TEXT NOT NULL,
    position      INTEGER NOT NULL,
    delivered     INTEGER NOT NULL DEFAULT 0,
    updated_at_ms INTEGER NOT NULL,
    PRIMARY KEY (sink, object)
);
CREATE TABLE delivery_dead_letters (
    id                 INTEGER PRIMARY KEY AUTOINCREMENT,
    sink               TEXT NOT NULL,
    object             TEXT NOT NULL,
    record_id          TEXT NOT NULL,
    seq                INTEGER NOT NULL,
    event_key          TEXT NOT NULL,
    change             TEXT NOT NULL,
    reason             TEXT NOT NULL,
    attempts           INTEGER NOT NULL,
    first_failed_at_ms INTEGER NOT NULL,
    state              TEXT NOT NULL CHECK (state IN ('pending','redrive','delivered','discarded')),
    note               TEXT,
    created_at_ms      INTEGER NOT NULL,
    updated_at_ms      INTEGER NOT NULL,
    UNIQUE (sink, seq)
);
CREATE INDEX delivery_dead_letters_open ON delivery_dead_letters (sink, object, state, record_id, seq);
CREATE INDEX writes_echo_event_key ON writes (echo_event_key) WHERE echo_event_key IS NOT NULL;
"#,
    },
    Migration {
        version: 18,
        name: "leases with fencing epochs (run roles)",
        sql: r#"
CREATE TABLE leases (
    name           TEXT PRIMARY KEY,
    holder         TEXT NOT NULL,
    epoch          INTEGER NOT NULL,
    acquired_at_ms INTEGER NOT NULL,
    renewed_at_ms  INTEGER NOT NULL,
    expires_at_ms  INTEGER NOT NULL
);
"#,
    },
    Migration {
        version: 19,
        name: "outbound message receipts (dedupe by notification id)",
        // In the change-log file with raw_changes (SQLite's split layout): a receipt commits in
        // the same transaction as the raw change its notification becomes.
        sql: r#"
CREATE TABLE outbound_notifications (
    organization_id      TEXT    NOT NULL CHECK (organization_id <> ''),
    notification_id      TEXT    NOT NULL CHECK (notification_id <> ''),
    flow                 TEXT    NOT NULL,
    action_id            TEXT    NOT NULL,
    object               TEXT    NOT NULL,
    record_id            TEXT    NOT NULL,
    status               TEXT    NOT NULL CHECK (status IN ('logged','dead_letter')),
    event_key            TEXT,
    error                TEXT,
    deliveries           INTEGER NOT NULL CHECK (deliveries >= 1),
    first_received_at_ms INTEGER NOT NULL,
    last_received_at_ms  INTEGER NOT NULL,
    PRIMARY KEY (organization_id, notification_id)
);
CREATE INDEX outbound_notifications_received ON outbound_notifications (last_received_at_ms);
"#,
    },
    Migration {
        version: 20,
        name: "platform events: received events with their checkpoints, events to publish",
        sql: r#"
CREATE TABLE platform_events_in (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    channel        TEXT    NOT NULL CHECK (channel <> ''),
    replay_id      BLOB    NOT NULL,
    name           TEXT    NOT NULL,
    event_uuid     TEXT    NOT NULL,
    schema_id      TEXT    NOT NULL,
    created_ms     INTEGER NOT NULL,
    fields         TEXT    NOT NULL,
    payload        BLOB    NOT NULL,
    received_at_ms INTEGER NOT NULL,
    UNIQUE (channel, replay_id)
);
CREATE TABLE platform_event_checkpoints (
    channel       TEXT    PRIMARY KEY CHECK (channel <> ''),
    replay_id     BLOB    NOT NULL,
    updated_at_ms INTEGER NOT NULL
);
CREATE TABLE platform_events_out (
    id                 INTEGER PRIMARY KEY AUTOINCREMENT,
    name               TEXT    NOT NULL CHECK (name <> ''),
    idempotency_key    TEXT    NOT NULL CHECK (idempotency_key <> ''),
    event_uuid         TEXT    NOT NULL,
    source             TEXT    NOT NULL,
    fields             TEXT    NOT NULL,
    state              TEXT    NOT NULL CHECK (state IN ('pending','published','dead','discarded')),
    attempts           INTEGER NOT NULL DEFAULT 0,
    next_attempt_at_ms INTEGER NOT NULL,
    claimed_by         TEXT,
    claimed_until_ms   INTEGER,
    replay_id          BLOB,
    last_error         TEXT,
    note               TEXT,
    created_at_ms      INTEGER NOT NULL,
    updated_at_ms      INTEGER NOT NULL,
    published_at_ms    INTEGER,
    UNIQUE (name, idempotency_key)
);
CREATE INDEX platform_events_out_due ON platform_events_out (state, next_attempt_at_ms, id);
"#,
    },
];

/// `PRAGMA synchronous` setting; see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SqliteSynchronous {
    #[default]
    Normal,
    Full,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SqliteOptions {
    pub synchronous: SqliteSynchronous,
    /// How long a writer waits for another connection's lock before failing with a retryable
    /// error.
    pub busy_timeout_ms: u64,
    /// A new store keeps its raw change log in a file of its own (see the module docs); an
    /// existing store keeps the layout it was created with.
    pub separate_change_log: bool,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        SqliteOptions {
            synchronous: SqliteSynchronous::Normal,
            busy_timeout_ms: 5_000,
            separate_change_log: true,
        }
    }
}

/// The change log and warehouse in SQLite files (see the module docs for the layout).
pub struct SqliteChangeLog {
    /// The warehouse file.
    path: PathBuf,
    /// The change-log file: `path` itself in the single-file layout.
    log_path: PathBuf,
    /// Writer of the warehouse file (curated commits, apply offsets, bookkeeping).
    conn: Arc<Mutex<Connection>>,
    /// Writer of the change-log file (appends and checkpoints); the same connection as `conn`
    /// in the single-file layout.
    log: Arc<Mutex<Connection>>,
    /// A read-only connection on the warehouse file (current rows for the apply stage): in WAL
    /// mode it never waits for a writer.
    reader: Arc<Mutex<Connection>>,
    /// A read-only connection on the change-log file, for reading the log back.
    log_reader: Arc<Mutex<Connection>>,
    /// Registered curated models and the PII keyring.
    registry: Registry,
    /// The single-applier lock file, once taken (released when the store is dropped).
    apply_lock: Mutex<Option<std::fs::File>>,
    /// Changes this process appended, for the apply stage to read back from memory.
    tail: Arc<TailCache>,
    /// Stop the background checkpointers (one per file) when the store is dropped.
    _checkpointers: Vec<Checkpointer>,
}

/// WAL checkpoints on their own connection and thread, so the copy of committed pages into the
/// database file (and its fsync) happens beside the writers instead of inside whichever commit
/// crosses the auto-checkpoint threshold (measured: ~15 % of pipeline CPU, all of it while the
/// write lock was held). The writer connection keeps a high auto-checkpoint threshold as a
/// backstop should this thread fall behind.
struct Checkpointer {
    stop: Option<std::sync::mpsc::Sender<()>>,
}

/// Page cache of the warehouse writer (and of the single-file layout's only writer).
const WAREHOUSE_CACHE_KIB: u32 = 16 * 1024;
/// Page cache of the change-log writer: appends touch the end of the log and its indexes only;
/// a merged ingest batch (≤ 1,000 compressed changes, ~3 MiB) stays within it.
const CHANGE_LOG_CACHE_KIB: u32 = 6 * 1024;

/// Pages of WAL after which the writer checkpoints by itself (backstop; 256 MiB of 16 KiB
/// pages). At 4,096 pages busy commits crossed it between two background checkpoints and paid
/// for the copy while the apply stage waited on them (measured: ~18 % of the commit time).
const WRITER_AUTOCHECKPOINT_PAGES: u32 = 16_384;
/// WAL frames found by a checkpoint above which the next one comes after
/// [`CHECKPOINT_BUSY_EVERY`] instead of [`CHECKPOINT_EVERY`].
const CHECKPOINT_BUSY_FRAMES: i64 = 1_024;
const CHECKPOINT_BUSY_EVERY: std::time::Duration = std::time::Duration::from_millis(1000);
/// How often the checkpointer copies the WAL into the database. Once a second rather than every
/// 100 ms: each checkpoint fsyncs, and pages rewritten within the second are copied once
/// (measured: pipeline CPU −8 % per event, bytes written unchanged).
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_millis(1000);

impl Checkpointer {
    fn start(path: &Path, options: &SqliteOptions) -> Checkpointer {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let path = path.to_path_buf();
        let busy = options.busy_timeout_ms;
        let spawned = std::thread::Builder::new()
            .name("sqlite-checkpoint".into())
            .spawn(move || {
                lower_thread_priority();
                let conn = match Connection::open(&path).and_then(|c| {
                    c.busy_timeout(std::time::Duration::from_millis(busy))?;
                    Ok(c)
                }) {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(path = %path.display(), error = %e, "WAL checkpointer could not open the database; the writer checkpoints by itself.");
                        return;
                    }
                };
                let mut wait = CHECKPOINT_EVERY;
                loop {
                    match rx.recv_timeout(wait) {
                        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                        _ => return,
                    }
                    let r: rusqlite::Result<(i64, i64, i64)> =
                        conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                        });
                    wait = match r {
                        // A large WAL means writers are busy: come back soon, so no commit
                        // reaches the auto-checkpoint backstop and pays for a copy itself.
                        Ok((_, frames, _)) if frames >= CHECKPOINT_BUSY_FRAMES => CHECKPOINT_BUSY_EVERY,
                        Ok(_) => CHECKPOINT_EVERY,
                        Err(e) => {
                            tracing::debug!(error = %e, "WAL checkpoint did not run; retrying.");
                            CHECKPOINT_EVERY
                        }
                    };
                }
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "WAL checkpointer thread did not start; the writer checkpoints by itself.");
            return Checkpointer { stop: None };
        }
        Checkpointer { stop: Some(tx) }
    }
}

/// Runs the calling thread at nice 10: the checkpointer uses idle CPU and does not preempt a
/// thread holding the write lock (on Linux a thread's nice value is its own).
fn lower_thread_priority() {
    extern "C" {
        fn setpriority(which: i32, who: u32, prio: i32) -> i32;
    }
    // SAFETY: setpriority(PRIO_PROCESS = 0, 0 = the calling thread, 10) has no memory effects;
    // failure only leaves the priority as it was.
    let _ = unsafe { setpriority(0, 0, 10) };
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

impl std::fmt::Debug for SqliteChangeLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteChangeLog")
            .field("path", &self.path)
            .finish()
    }
}

/// A write transaction on the SQLite store, for curated writers: their rows and the apply offset
/// commit together when the closure passed to [`SqliteChangeLog::with_transaction`] returns `Ok`.
pub struct SqliteTx<'c> {
    tx: rusqlite::Transaction<'c>,
}

impl SqliteTx<'_> {
    /// The connection inside the transaction, for the caller's own statements.
    pub fn connection(&self) -> &Connection {
        &self.tx
    }

    /// Sets the apply offset of `consumer` as part of this transaction (never backwards).
    pub fn set_applied_offset(&self, consumer: &str, offset: LogOffset) -> Result<()> {
        set_applied_offset_in(&self.tx, consumer, offset)
    }
}

impl SqliteChangeLog {
    /// Opens (creating if needed) the database at `path` with default options and applies
    /// pending migrations.
    pub async fn open(path: impl AsRef<Path>) -> Result<SqliteChangeLog> {
        SqliteChangeLog::open_with(path, SqliteOptions::default()).await
    }

    pub async fn open_with(path: impl AsRef<Path>, options: SqliteOptions) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let log_path = change_log_path(&path);
        let (p, lp) = (path.clone(), log_path.clone());
        let opened = tokio::task::spawn_blocking(move || {
            // A new warehouse's layout is fixed while its first migrations hold the write
            // lock: its change-log file is created before they commit, so a process that
            // opens the warehouse concurrently and finds it migrated also finds the change
            // log (deciding by `lp.exists()` alone after the commit let two processes pick
            // different layouts and log to different files).
            let mut created_log = None;
            let (conn, before) = open_blocking(&p, options, WAREHOUSE_CACHE_KIB, || {
                if options.separate_change_log {
                    created_log =
                        Some(open_blocking(&lp, options, CHANGE_LOG_CACHE_KIB, || Ok(()))?.0);
                }
                Ok(())
            })?;
            let split = if before > 0 {
                lp.exists()
            } else {
                options.separate_change_log
            };
            let reader = open_reader(&p, options)?;
            let models = warehouse::load_models(&conn)?;
            let log = if split {
                let log = match created_log {
                    Some(log) => log,
                    None => open_blocking(&lp, options, CHANGE_LOG_CACHE_KIB, || Ok(()))?.0,
                };
                move_log_past_applied(&conn, &log, &lp)?;
                Some((log, open_reader(&lp, options)?))
            } else {
                None
            };
            Ok::<_, StoreError>((conn, reader, log, models))
        })
        .await
        .map_err(|source| StoreError::Worker { op: "open", source })??;
        let (conn, reader, log, models) = opened;
        let registry = Registry::new(Dialect::Sqlite);
        registry.load(models)?;
        let conn = Arc::new(Mutex::new(conn));
        let reader = Arc::new(Mutex::new(reader));
        let mut checkpointers = vec![Checkpointer::start(&path, &options)];
        let (log_path, log, log_reader) = match log {
            Some((log, log_reader)) => {
                checkpointers.push(Checkpointer::start(&log_path, &options));
                (
                    log_path,
                    Arc::new(Mutex::new(log)),
                    Arc::new(Mutex::new(log_reader)),
                )
            }
            None => (path.clone(), Arc::clone(&conn), Arc::clone(&reader)),
        };
        tracing::debug!(path = %path.display(), change_log = %log_path.display(), "Opened SQLite store.");
        Ok(SqliteChangeLog {
            path,
            log_path,
            conn,
            log,
            reader,
            log_reader,
            registry,
            apply_lock: Mutex::new(None),
            tail: Arc::new(TailCache::new(DEFAULT_TAIL_BYTES)),
            _checkpointers: checkpointers,
        })
    }

    /// Sets (or clears) the keyring that seals PII columns, raw payloads of objects with PII
    /// and dead letters. Takes effect for calls that start afterwards.
    pub fn set_keyring(&self, keyring: Option<Arc<Keyring>>) {
        self.registry.set_keyring(keyring);
    }

    /// The warehouse file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file holding the raw change log: [`change_log_path`] of [`Self::path`], or the
    /// warehouse file itself for a store created with the single-file layout.
    pub fn change_log_file(&self) -> &Path {
        &self.log_path
    }

    /// Whether the raw change log has a file of its own.
    fn split(&self) -> bool {
        !Arc::ptr_eq(&self.conn, &self.log)
    }

    /// Runs `f` in one `BEGIN IMMEDIATE` transaction on the blocking pool; commits when it
    /// returns `Ok`, rolls back otherwise. `f` may write anything, so the in-memory log tail is
    /// dropped (later reads of the log go to the database until the next append).
    pub async fn with_transaction<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&SqliteTx<'_>) -> Result<T> + Send + 'static,
    {
        let out = self.transaction(f).await;
        self.tail.clear();
        out
    }

    /// [`Self::with_transaction`] for this crate's own writers, which never touch `raw_changes`.
    pub(crate) async fn transaction<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&SqliteTx<'_>) -> Result<T> + Send + 'static,
    {
        self.blocking("transaction", move |conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(|e| StoreError::sqlite("begin transaction", e))?;
            let handle = SqliteTx { tx };
            let out = f(&handle)?;
            handle
                .tx
                .commit()
                .map_err(|e| StoreError::sqlite("commit transaction", e))?;
            Ok(out)
        })
        .await
    }

    /// Raw changes and dead letters with the checkpoint, in one transaction. Payloads are
    /// compressed and sealed before the connection is taken.
    async fn append(
        &self,
        channel: &str,
        changes: &[RawChange],
        dead_letters: &[DeadLetter],
        checkpoint: &ReplayId,
    ) -> Result<AppendOutcome> {
        check_name("append batch", "channel", channel)?;
        // Dead letters go to the warehouse file before the append (module docs); a batch the
        // log would refuse stores none of them either.
        let early = self.split() && !dead_letters.is_empty();
        for (index, c) in changes.iter().enumerate().filter(|_| early) {
            if c.entity.is_empty() {
                return Err(StoreError::InvalidInput {
                    backend: BACKEND,
                    op: "append batch",
                    reason: format!(
                        "change {index} of channel '{channel}' (event key {}) names no entity",
                        c.event_key
                    ),
                });
            }
        }
        let ctx = self.registry.ctx();
        let payloads = ctx.encode_raw_batch(changes)?;
        let channel = channel.to_string();
        let changes = changes.to_vec();
        let dead_letters = dead_letters.to_vec();
        let checkpoint = checkpoint.clone();
        let tail = Arc::clone(&self.tail);
        let dead_letters = if self.split() && !dead_letters.is_empty() {
            let c = ctx.clone();
            self.blocking("store dead letters", move |conn| {
                let tx = conn
                    .transaction_with_behavior(TransactionBehavior::Immediate)
                    .map_err(|e| StoreError::sqlite("begin dead letters", e))?;
                warehouse::insert_dead_letters(&tx, &c, &dead_letters, true)?;
                tx.commit()
                    .map_err(|e| StoreError::sqlite("commit dead letters", e))
            })
            .await?;
            Vec::new()
        } else {
            dead_letters
        };
        self.blocking_on(&self.log, "append batch", move |conn| {
            append_blocking(
                conn,
                &ctx,
                &channel,
                changes,
                &payloads,
                &dead_letters,
                &checkpoint,
                &tail,
            )
        })
        .await
    }

    /// Up to `limit` changes with offset `>= from` from the database itself.
    async fn read_stored(&self, from: LogOffset, limit: usize) -> Result<Vec<LoggedChange>> {
        self.read_log_where(
            "read log",
            "log_offset >= ?1 ORDER BY log_offset".into(),
            vec![to_i64(from).into()],
            limit,
        )
        .await
    }

    /// The first `limit` raw changes matching `condition` (a WHERE clause with its ORDER BY),
    /// read on the change-log reader; payloads opened and decompressed after the connection is
    /// released. The limit stops the row loop rather than being a bound `LIMIT ?`: SQLite
    /// re-prepares a statement whose bound LIMIT changes (it plans with the value), which made
    /// every log read of the apply stage compile its SELECT again (measured: ~10 % of pipeline
    /// CPU at 2,000 changes/s). Both conditions scan an index in order, so nothing is sorted.
    async fn read_log_where(
        &self,
        op: &'static str,
        condition: String,
        params: Vec<rusqlite::types::Value>,
        limit: usize,
    ) -> Result<Vec<LoggedChange>> {
        let ctx = self.registry.ctx();
        let rows = self
            .blocking_on(&self.log_reader, op, move |conn| {
                let sql = format!(
                    "SELECT log_offset, channel, event_key, replay_id, schema_id, entity,
                         change_type, commit_timestamp, commit_number, sequence_number, payload
                     FROM raw_changes WHERE {condition}"
                );
                let mut stmt = conn
                    .prepare_cached(&sql)
                    .map_err(|e| StoreError::sqlite(op, e))?;
                let mut rows = stmt
                    .query(rusqlite::params_from_iter(params))
                    .map_err(|e| StoreError::sqlite(op, e))?;
                let mut out = Vec::new();
                while out.len() < limit {
                    let Some(r) = rows.next().map_err(|e| StoreError::sqlite(op, e))? else {
                        break;
                    };
                    let get = |e| StoreError::sqlite("decode log row", e);
                    out.push(StoredLogRow {
                        offset: r.get(0).map_err(get)?,
                        channel: r.get(1).map_err(get)?,
                        event_key: r.get(2).map_err(get)?,
                        replay_id: r.get(3).map_err(get)?,
                        schema_id: r.get(4).map_err(get)?,
                        entity: r.get(5).map_err(get)?,
                        change_type: r.get(6).map_err(get)?,
                        version: RecordVersion {
                            commit_timestamp: r.get(7).map_err(get)?,
                            commit_number: r.get(8).map_err(get)?,
                            sequence_number: r.get(9).map_err(get)?,
                        },
                        payload: r.get(10).map_err(get)?,
                    });
                }
                Ok(out)
            })
            .await?;
        wh::cpu_bound(|| rows.into_iter().map(|r| r.decode(BACKEND, &ctx)).collect())
    }

    async fn blocking<T, F>(&self, op: &'static str, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    {
        self.blocking_on(&self.conn, op, f).await
    }

    async fn blocking_on<T, F>(
        &self,
        conn: &Arc<Mutex<Connection>>,
        op: &'static str,
        f: F,
    ) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    {
        let conn = Arc::clone(conn);
        tokio::task::spawn_blocking(move || {
            let mut guard = conn.lock();
            f(&mut guard)
        })
        .await
        .map_err(|source| StoreError::Worker { op, source })?
    }
}

/// The read-only connection (opened after migrations ran on the writer).
fn open_reader(path: &Path, options: SqliteOptions) -> Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| StoreError::sqlite("open reader", e))?;
    conn.busy_timeout(std::time::Duration::from_millis(options.busy_timeout_ms))
        .map_err(|e| StoreError::sqlite("set busy timeout", e))?;
    conn.execute_batch("PRAGMA cache_size=-4096;")
        .map_err(|e| StoreError::sqlite("set reader pragmas", e))?;
    // Row loads keep up to ten `IN (…)` shapes per object (see `in_list_len`) beside the log
    // reads: the default 16 statements made them re-prepare.
    conn.set_prepared_statement_cache_capacity(128);
    Ok(conn)
}

/// The change-log file of the warehouse file `warehouse`: `<stem>.changes.<ext>` beside it
/// (`warehouse.db` → `warehouse.changes.db`; a name without extension gets `.changes`).
pub fn change_log_path(warehouse: &Path) -> PathBuf {
    let name = warehouse
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let file = match name.rsplit_once('.') {
        Some((stem, ext)) if !stem.is_empty() => format!("{stem}.changes.{ext}"),
        _ => format!("{name}.changes"),
    };
    warehouse.with_file_name(file)
}

/// Opens (creating if needed) a database file, sets the writer pragmas and applies pending
/// migrations; returns the connection and the schema version found before migrating (0 for a
/// new file). `on_new` runs inside the migration transaction of a new file, before it commits.
fn open_blocking(
    path: &Path,
    options: SqliteOptions,
    cache_kib: u32,
    on_new: impl FnOnce() -> Result<()>,
) -> Result<(Connection, i64)> {
    let mut conn = Connection::open(path).map_err(|e| StoreError::sqlite("open database", e))?;
    conn.busy_timeout(std::time::Duration::from_millis(options.busy_timeout_ms))
        .map_err(|e| StoreError::sqlite("set busy timeout", e))?;
    let sync = match options.synchronous {
        SqliteSynchronous::Normal => "NORMAL",
        SqliteSynchronous::Full => "FULL",
    };
    // 16 KiB pages for a new database (an existing one keeps its size): a 3–8 KB change's row
    // fits in one page instead of spilling into an overflow page, and a commit writes a quarter
    // as many WAL frames (measured on the pipeline bench: ~20 % less CPU per event than 4 KiB;
    // 64 KiB was worse again).
    conn.execute_batch("PRAGMA page_size=16384;")
        .map_err(|e| StoreError::sqlite("set page size", e))?;
    let mode = enable_wal(&conn, options.busy_timeout_ms)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::InvalidInput {
            backend: BACKEND,
            op: "enable WAL",
            reason: format!(
                "{} cannot use write-ahead logging (journal mode stays '{mode}')",
                path.display()
            ),
        });
    }
    // A 16 MiB page cache (a full apply batch of 3–8 KB changes is ~5 MiB of dirty pages): with
    // the default 2 MiB a batch spills dirty pages to the WAL before commit (measured: ~4 % of
    // pipeline CPU in pagerStress); 32 and 64 MiB bought no throughput and counted against the
    // pipeline's RSS.
    conn.execute_batch(&format!(
        "PRAGMA synchronous={sync}; PRAGMA foreign_keys=ON; PRAGMA cache_size=-{cache_kib}; \
         PRAGMA wal_autocheckpoint={WRITER_AUTOCHECKPOINT_PAGES}; PRAGMA journal_size_limit=67108864;"
    ))
    .map_err(|e| StoreError::sqlite("set pragmas", e))?;
    conn.set_prepared_statement_cache_capacity(256);
    let before = migrate_blocking(&mut conn, on_new)?;
    Ok((conn, before))
}

/// The power-loss rule of the two-file layout (module docs): when every apply offset in the
/// warehouse is at or below the log's high-water mark, nothing to do; otherwise the log lost
/// its last commits and its offset sequence moves past the highest apply offset.
fn move_log_past_applied(warehouse: &Connection, log: &Connection, log_path: &Path) -> Result<()> {
    let applied: i64 = warehouse
        .query_row(
            "SELECT COALESCE(MAX(log_offset), 0) FROM apply_offsets",
            [],
            |r| r.get(0),
        )
        .map_err(|e| StoreError::sqlite("read apply offsets", e))?;
    let high = to_i64(log_high_water(log)?);
    if applied <= high {
        return Ok(());
    }
    log.execute(
        "INSERT INTO sqlite_sequence (name, seq) SELECT 'raw_changes', ?1
             WHERE NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = 'raw_changes')",
        [applied],
    )
    .and_then(|_| {
        log.execute(
            "UPDATE sqlite_sequence SET seq = max(seq, ?1) WHERE name = 'raw_changes'",
            [applied],
        )
    })
    .map_err(|e| StoreError::sqlite("move the change log past the apply offset", e))?;
    tracing::warn!(
        change_log = %log_path.display(),
        log_end = high,
        applied,
        "The change log ends before the warehouse's apply offset (its last commits were lost, \
         e.g. to a power loss). New changes are logged after offset {applied}; redelivered ones \
         are applied again as no-ops where the warehouse already has them."
    );
    Ok(())
}

/// Switches the file to write-ahead logging. Switching a new file takes an exclusive lock that
/// SQLite does not wait for (no busy handler), so a process opening a new warehouse while
/// another creates it got "database is locked" (seen: `sfsync run` started beside a CLI
/// command); a busy answer is retried for up to `busy_timeout_ms`.
fn enable_wal(conn: &Connection, busy_timeout_ms: u64) -> Result<String> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_millis(busy_timeout_ms);
    loop {
        match conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get::<_, String>(0)) {
            Ok(mode) => return Ok(mode),
            Err(rusqlite::Error::SqliteFailure(e, _))
                if matches!(
                    e.code,
                    rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
                ) && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            Err(e) => return Err(StoreError::sqlite("enable WAL", e)),
        }
    }
}

/// Applies pending migrations; returns the schema version found before. `on_new` runs before
/// the commit when the file had no schema (version 0).
fn migrate_blocking(conn: &mut Connection, on_new: impl FnOnce() -> Result<()>) -> Result<i64> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(|e| StoreError::sqlite("begin migrations", e))?;
    tx.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
             version       INTEGER PRIMARY KEY,
             name          TEXT    NOT NULL,
             applied_at_ms INTEGER NOT NULL
         )",
    )
    .map_err(|e| StoreError::sqlite("create schema_migrations", e))?;
    let current: i64 = tx
        .query_row(
            "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
            [],
            |r| r.get(0),
        )
        .map_err(|e| StoreError::sqlite("read schema version", e))?;
    let known = migrate::latest(MIGRATIONS);
    if current > known {
        return Err(StoreError::SchemaTooNew {
            backend: BACKEND,
            found: current,
            known,
        });
    }
    for m in MIGRATIONS.iter().filter(|m| m.version > current) {
        tx.execute_batch(m.sql)
            .map_err(|e| StoreError::sqlite("apply migration", e))?;
        tx.execute(
            "INSERT INTO schema_migrations (version, name, applied_at_ms) VALUES (?1, ?2, ?3)",
            params![m.version, m.name, now_ms()],
        )
        .map_err(|e| StoreError::sqlite("record migration", e))?;
        tracing::info!(
            version = m.version,
            name = m.name,
            "Applied SQLite migration."
        );
    }
    if current == 0 {
        on_new()?;
    }
    tx.commit()
        .map_err(|e| StoreError::sqlite("commit migrations", e))?;
    Ok(current)
}

fn check_name(op: &'static str, what: &str, value: &str) -> Result<()> {
    if value.is_empty() {
        return Err(StoreError::InvalidInput {
            backend: BACKEND,
            op,
            reason: format!("{what} must not be empty"),
        });
    }
    Ok(())
}

fn to_i64(offset: LogOffset) -> i64 {
    i64::try_from(offset).unwrap_or(i64::MAX)
}

/// The raw log's AUTOINCREMENT high-water mark: no change at or below it can appear later.
fn log_high_water(conn: &Connection) -> Result<LogOffset> {
    let seq: Option<i64> = conn
        .prepare_cached("SELECT seq FROM sqlite_sequence WHERE name = 'raw_changes'")
        .and_then(|mut s| s.query_row([], |r| r.get(0)).optional())
        .map_err(|e| StoreError::sqlite("read log high-water mark", e))?;
    Ok(seq.unwrap_or(0).max(0) as LogOffset)
}

#[allow(clippy::too_many_arguments)]
fn append_blocking(
    conn: &mut Connection,
    ctx: &Ctx,
    channel: &str,
    changes: Vec<RawChange>,
    payloads: &[Vec<u8>],
    dead_letters: &[DeadLetter],
    checkpoint: &ReplayId,
    tail: &TailCache,
) -> Result<AppendOutcome> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(|e| StoreError::sqlite("begin append", e))?;
    let mut out = AppendOutcome::default();
    let before = log_high_water(&tx)?;
    let mut appended = Vec::with_capacity(changes.len());
    {
        let mut stmt = tx
            .prepare_cached(
                "INSERT INTO raw_changes (channel, event_key, replay_id, schema_id, entity,
                     change_type, commit_timestamp, commit_number, sequence_number, payload,
                     appended_at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
                 ON CONFLICT (commit_timestamp, event_key) DO NOTHING",
            )
            .map_err(|e| StoreError::sqlite("prepare append", e))?;
        let now = now_ms();
        for (index, (c, payload)) in changes.into_iter().zip(payloads).enumerate() {
            let n = stmt
                .execute(params![
                    channel,
                    c.event_key.as_str(),
                    c.replay_id.as_bytes(),
                    c.schema_id,
                    c.entity,
                    c.change_type.as_str(),
                    c.version.commit_timestamp,
                    c.version.commit_number,
                    c.version.sequence_number,
                    &payload[..],
                    now,
                ])
                .map_err(|e| StoreError::RejectedChange {
                    backend: BACKEND,
                    channel: channel.to_string(),
                    index,
                    event_key: c.event_key.to_string(),
                    source: Box::new(e),
                })?;
            if n == 1 {
                let offset = tx.last_insert_rowid() as LogOffset;
                out.appended += 1;
                out.last_offset = Some(offset);
                appended.push(LoggedChange {
                    offset,
                    channel: channel.to_string(),
                    change: c,
                });
            } else {
                out.duplicates += 1;
            }
        }
    }
    let after = log_high_water(&tx)?;
    warehouse::insert_dead_letters(&tx, ctx, dead_letters, false)?;
    tx.prepare_cached(
        "INSERT INTO checkpoints (channel, replay_id, updated_at_ms) VALUES (?1, ?2, ?3)
         ON CONFLICT (channel) DO UPDATE SET replay_id = excluded.replay_id,
             updated_at_ms = excluded.updated_at_ms",
    )
    .and_then(|mut s| s.execute(params![channel, checkpoint.as_bytes(), now_ms()]))
    .map_err(|e| StoreError::sqlite("write checkpoint", e))?;
    tx.commit()
        .map_err(|e| StoreError::sqlite("commit append", e))?;
    // Still under the connection lock: published in commit order.
    tail.publish(before, after, appended);
    Ok(out)
}

fn set_applied_offset_in(conn: &Connection, consumer: &str, offset: LogOffset) -> Result<()> {
    check_name("set applied offset", "consumer", consumer)?;
    let current: Option<i64> = conn
        .prepare_cached("SELECT log_offset FROM apply_offsets WHERE consumer = ?1")
        .and_then(|mut s| s.query_row([consumer], |r| r.get(0)).optional())
        .map_err(|e| StoreError::sqlite("read applied offset", e))?;
    if let Some(cur) = current {
        if (cur as u64) > offset {
            return Err(StoreError::OffsetRegression {
                backend: BACKEND,
                consumer: consumer.to_string(),
                current: cur as u64,
                requested: offset,
            });
        }
    }
    conn.prepare_cached(
        "INSERT INTO apply_offsets (consumer, log_offset, updated_at_ms) VALUES (?1, ?2, ?3)
         ON CONFLICT (consumer) DO UPDATE SET log_offset = excluded.log_offset,
             updated_at_ms = excluded.updated_at_ms",
    )
    .and_then(|mut s| s.execute(params![consumer, to_i64(offset), now_ms()]))
    .map_err(|e| StoreError::sqlite("write applied offset", e))?;
    Ok(())
}

/// One `raw_changes` row as stored (payload still compressed / sealed).
pub(crate) struct StoredLogRow {
    pub offset: i64,
    pub channel: String,
    pub event_key: String,
    pub replay_id: Vec<u8>,
    pub schema_id: String,
    pub entity: String,
    pub change_type: String,
    pub version: RecordVersion,
    pub payload: Vec<u8>,
}

impl StoredLogRow {
    /// The row as the archive holds it (see [`crate::retention::Retention::archive_rows`]).
    pub(crate) fn into_archive_row(
        self,
        ctx: &Ctx,
        appended_at_ms: i64,
    ) -> Result<crate::archive::ArchiveRow> {
        // Sealed in the archive when the log holds it sealed or the object has PII now (a
        // payload logged sealed stays sealed even if this process has not registered the
        // object's model).
        let sealed = crate::pii::is_sealed_bytes(&self.payload)
            || ctx.model(&self.entity).is_some_and(|m| m.has_pii);
        let payload = ctx.decode_raw(&self.entity, self.offset, self.payload)?;
        let payload = if sealed {
            let k = ctx.keyring_for("archive rows", || {
                format!("raw changes of '{}' carry PII", self.entity)
            })?;
            k.seal_bytes(&crate::pii::archive_aad(&self.entity), &payload)
        } else {
            payload
        };
        Ok(crate::archive::ArchiveRow {
            offset: self.offset,
            channel: self.channel,
            event_key: self.event_key,
            replay_id: self.replay_id,
            schema_id: self.schema_id,
            entity: self.entity,
            change_type: self.change_type,
            commit_timestamp: self.version.commit_timestamp,
            commit_number: self.version.commit_number,
            sequence_number: self.version.sequence_number,
            payload,
            sealed,
            appended_at_ms,
        })
    }

    /// The logged change, payload opened and decompressed; bad data is an error, never a panic.
    pub(crate) fn decode(self, backend: &'static str, ctx: &Ctx) -> Result<LoggedChange> {
        let offset = self.offset;
        let corrupt = |reason: String| StoreError::Corrupt {
            backend,
            table: "raw_changes",
            offset,
            reason,
        };
        let change_type = ChangeType::parse(&self.change_type)
            .ok_or_else(|| corrupt(format!("unknown change type '{}'", self.change_type)))?;
        let offset_u = u64::try_from(offset).map_err(|_| corrupt("negative log offset".into()))?;
        let event_key = crate::event_key_from_stored(&self.event_key)
            .ok_or_else(|| corrupt(format!("unreadable event key '{}'", self.event_key)))?;
        let payload = ctx.decode_raw(&self.entity, offset, self.payload)?;
        Ok(LoggedChange {
            offset: offset_u,
            channel: self.channel,
            change: RawChange {
                event_key,
                replay_id: ReplayId::from_bytes(self.replay_id),
                schema_id: self.schema_id,
                entity: self.entity,
                change_type,
                version: self.version,
                payload: payload.into(),
            },
        })
    }
}

#[async_trait]
impl ChangeLog for SqliteChangeLog {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    async fn append_batch(
        &self,
        channel: &str,
        changes: &[RawChange],
        checkpoint: &ReplayId,
    ) -> Result<AppendOutcome> {
        check_name("append batch", "channel", channel)?;
        self.append(channel, changes, &[], checkpoint).await
    }

    async fn checkpoint(&self, channel: &str) -> Result<Option<ReplayId>> {
        let channel = channel.to_string();
        self.blocking_on(&self.log, "read checkpoint", move |conn| {
            conn.query_row(
                "SELECT replay_id FROM checkpoints WHERE channel = ?1",
                [&channel],
                |r| r.get::<_, Vec<u8>>(0),
            )
            .optional()
            .map(|o| o.map(ReplayId::from_bytes))
            .map_err(|e| StoreError::sqlite("read checkpoint", e))
        })
        .await
    }

    async fn read_from(&self, from: LogOffset, limit: usize) -> Result<Vec<LoggedChange>> {
        if let Some((mut out, next)) = self.tail.read(from, limit) {
            if out.len() < limit {
                out.extend(self.read_stored(next, limit - out.len()).await?);
            }
            return Ok(out);
        }
        self.read_stored(from, limit).await
    }

    async fn read_entity(
        &self,
        entity: &str,
        from: LogOffset,
        to: LogOffset,
        limit: usize,
    ) -> Result<Vec<LoggedChange>> {
        if limit == 0 || to < from {
            return Ok(Vec::new());
        }
        self.read_log_where(
            "read log of an object",
            "entity = ?1 AND log_offset >= ?2 AND log_offset <= ?3 ORDER BY log_offset".into(),
            vec![
                entity.to_string().into(),
                to_i64(from).into(),
                to_i64(to).into(),
            ],
            limit,
        )
        .await
    }

    async fn read_offsets(&self, offsets: &[LogOffset]) -> Result<Vec<LoggedChange>> {
        let mut offsets = offsets.to_vec();
        offsets.sort_unstable();
        offsets.dedup();
        let mut out = Vec::with_capacity(offsets.len());
        for chunk in offsets.chunks(OFFSETS_CHUNK) {
            let params: Vec<String> = (1..=chunk.len()).map(|n| format!("?{n}")).collect();
            out.extend(
                self.read_log_where(
                    "read log entries",
                    format!("log_offset IN ({}) ORDER BY log_offset", params.join(", ")),
                    chunk.iter().map(|o| to_i64(*o).into()).collect(),
                    usize::MAX,
                )
                .await?,
            );
        }
        Ok(out)
    }

    async fn locate(&self, point: &LogPoint) -> Result<Option<LogMark>> {
        use rusqlite::types::Value as V;
        let cols = "log_offset, channel, replay_id, commit_timestamp";
        let (sql, params): (String, Vec<V>) = match point {
            LogPoint::Oldest { channel: None } => (
                format!("SELECT {cols} FROM raw_changes ORDER BY log_offset LIMIT 1"),
                vec![],
            ),
            LogPoint::Oldest {
                channel: Some(channel),
            } => (
                format!(
                    "SELECT {cols} FROM raw_changes WHERE channel = ?1 ORDER BY log_offset LIMIT 1"
                ),
                vec![channel.clone().into()],
            ),
            LogPoint::FirstCommittedSince { entity, commit_ms } => (
                format!(
                    "SELECT {cols} FROM raw_changes WHERE log_offset = (SELECT min(log_offset) \
                     FROM raw_changes WHERE commit_timestamp >= ?2 AND entity = ?1)"
                ),
                vec![entity.clone().into(), (*commit_ms).into()],
            ),
            LogPoint::ReplayId { channel, replay_id } => (
                format!(
                    "SELECT {cols} FROM raw_changes WHERE channel = ?1 AND replay_id = ?2 \
                     ORDER BY log_offset LIMIT 1"
                ),
                vec![channel.clone().into(), replay_id.as_bytes().to_vec().into()],
            ),
            LogPoint::FirstAfter { entity, after } => (
                format!(
                    "SELECT {cols} FROM raw_changes WHERE entity = ?1 AND log_offset > ?2 \
                     ORDER BY log_offset LIMIT 1"
                ),
                vec![entity.clone().into(), to_i64(*after).into()],
            ),
        };
        self.blocking_on(&self.log_reader, "locate in log", move |conn| {
            conn.query_row(&sql, rusqlite::params_from_iter(params), |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, Vec<u8>>(2)?,
                    r.get::<_, i64>(3)?,
                ))
            })
            .optional()
            .map_err(|e| StoreError::sqlite("locate in log", e))
            .map(|o| {
                o.map(|(offset, channel, replay_id, commit_timestamp)| LogMark {
                    offset: offset.max(0) as LogOffset,
                    channel,
                    replay_id: ReplayId::from_bytes(replay_id),
                    commit_timestamp,
                })
            })
        })
        .await
    }

    async fn applied_offset(&self, consumer: &str) -> Result<Option<LogOffset>> {
        let consumer = consumer.to_string();
        self.blocking("read applied offset", move |conn| {
            let v: Option<i64> = conn
                .query_row(
                    "SELECT log_offset FROM apply_offsets WHERE consumer = ?1",
                    [&consumer],
                    |r| r.get(0),
                )
                .optional()
                .map_err(|e| StoreError::sqlite("read applied offset", e))?;
            Ok(v.map(|v| v.max(0) as LogOffset))
        })
        .await
    }

    async fn set_applied_offset(&self, consumer: &str, offset: LogOffset) -> Result<()> {
        let consumer = consumer.to_string();
        self.transaction(move |tx| tx.set_applied_offset(&consumer, offset))
            .await
    }

    async fn applied_migrations(&self) -> Result<Vec<AppliedMigration>> {
        self.blocking("read migrations", |conn| {
            let mut stmt = conn
                .prepare(
                    "SELECT version, name, applied_at_ms FROM schema_migrations ORDER BY version",
                )
                .map_err(|e| StoreError::sqlite("read migrations", e))?;
            let rows = stmt
                .query_map([], |r| {
                    Ok(AppliedMigration {
                        version: r.get(0)?,
                        name: r.get(1)?,
                        applied_at_ms: r.get(2)?,
                    })
                })
                .map_err(|e| StoreError::sqlite("read migrations", e))?;
            rows.collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|e| StoreError::sqlite("read migrations", e))
        })
        .await
    }
}
