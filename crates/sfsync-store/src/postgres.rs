//! Postgres backend (tokio-postgres, Postgres 15+).
//!
//! Appends take `LOCK TABLE raw_changes IN SHARE ROW EXCLUSIVE MODE` inside their transaction,
//! which serialises appenders (readers are not blocked), so log offsets are assigned in commit
//! order: a reader never finds a new entry below an offset it has already seen. Durability is the
//! server's (`synchronous_commit`); the checkpoint commits with the events it covers either way.

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use async_trait::async_trait;
use sfsync_core::{RecordVersion, ReplayId};
use tokio::sync::{Mutex, MutexGuard};
use tokio_postgres::{Client, Config, NoTls, Statement, Transaction};

use crate::curated::DeadLetter;
use crate::error::{Result, StoreError};
use crate::migrate::{self, AppliedMigration, Migration};
use crate::pii::Keyring;
use crate::sqlite::StoredLogRow;
use crate::warehouse::{Dialect, Registry};
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

const BACKEND: &str = "postgres";

/// Key of the transaction-scoped advisory lock that serialises migrations.
const MIGRATION_LOCK_KEY: i64 = 0x5f5f_5359_4e43_0001;

/// The Postgres schema, in order. Never edit a released entry; append a new one.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "raw change log, checkpoints, apply offsets",
        sql: r#"
CREATE TABLE raw_changes (
    log_offset       BIGINT  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    channel          TEXT    NOT NULL CHECK (channel <> ''),
    event_key        TEXT    NOT NULL UNIQUE CHECK (event_key <> ''),
    replay_id        BYTEA   NOT NULL,
    schema_id        TEXT    NOT NULL,
    entity           TEXT    NOT NULL CHECK (entity <> ''),
    change_type      TEXT    NOT NULL CHECK (change_type IN ('CREATE','UPDATE','DELETE',
                         'UNDELETE','GAP_CREATE','GAP_UPDATE','GAP_DELETE','GAP_UNDELETE',
                         'GAP_OVERFLOW')),
    commit_timestamp BIGINT  NOT NULL,
    commit_number    BIGINT  NOT NULL,
    sequence_number  INTEGER NOT NULL,
    payload          BYTEA   NOT NULL,
    appended_at_ms   BIGINT  NOT NULL
);
CREATE TABLE checkpoints (
    channel       TEXT   PRIMARY KEY CHECK (channel <> ''),
    replay_id     BYTEA  NOT NULL,
    updated_at_ms BIGINT NOT NULL
);
CREATE TABLE apply_offsets (
    consumer      TEXT   PRIMARY KEY CHECK (consumer <> ''),
    log_offset    BIGINT NOT NULL CHECK (log_offset >= 0),
    updated_at_ms BIGINT NOT NULL
);
"#,
    },
    Migration {
        version: 2,
        name:
            "warehouse bookkeeping: schemas, repairs, re-syncs, dead letters, audit, runs, models",
        sql: r#"
CREATE TABLE schemas (
    schema_id    TEXT   PRIMARY KEY CHECK (schema_id <> ''),
    json         TEXT   NOT NULL,
    stored_at_ms BIGINT NOT NULL
);
CREATE TABLE repair_requests (
    id                  BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    object              TEXT   NOT NULL CHECK (object <> ''),
    record_ids          TEXT   NOT NULL,
    reason              TEXT   NOT NULL,
    event_key           TEXT   NOT NULL,
    commit_timestamp_ms BIGINT NOT NULL,
    status              TEXT   NOT NULL CHECK (status IN ('pending','done')),
    created_at_ms       BIGINT NOT NULL,
    done_at_ms          BIGINT
);
CREATE INDEX repair_requests_status ON repair_requests (status, id);
CREATE TABLE resync_requests (
    id            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    object        TEXT   NOT NULL,
    channel       TEXT   NOT NULL,
    from_ms       BIGINT NOT NULL,
    reason        TEXT   NOT NULL,
    event_key     TEXT,
    status        TEXT   NOT NULL CHECK (status <> ''),
    created_at_ms BIGINT NOT NULL
);
CREATE TABLE dead_letters (
    id            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    channel       TEXT   NOT NULL,
    replay_id     BYTEA,
    schema_id     TEXT   NOT NULL,
    stage         TEXT   NOT NULL,
    error         TEXT   NOT NULL,
    object        TEXT,
    payload       BYTEA  NOT NULL,
    created_at_ms BIGINT NOT NULL
);
CREATE TABLE audit_log (
    seq           BIGINT PRIMARY KEY,
    object        TEXT   NOT NULL,
    record_id     TEXT   NOT NULL,
    change_type   TEXT   NOT NULL,
    event_key     TEXT   NOT NULL,
    entry         TEXT   NOT NULL,
    sealed        TEXT,
    prev_hash     TEXT   NOT NULL,
    hash          TEXT   NOT NULL,
    created_at_ms BIGINT NOT NULL
);
CREATE TABLE runs (
    run_id        TEXT   PRIMARY KEY CHECK (run_id <> ''),
    kind          TEXT   NOT NULL,
    status        TEXT   NOT NULL,
    started_at_ms BIGINT NOT NULL,
    ended_at_ms   BIGINT,
    detail        TEXT   NOT NULL
);
CREATE INDEX runs_started ON runs (started_at_ms);
CREATE TABLE curated_models (
    object        TEXT   PRIMARY KEY CHECK (object <> ''),
    model         TEXT   NOT NULL,
    updated_at_ms BIGINT NOT NULL
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
        // See the SQLite migration 4: appends land at the end of the index instead of on a
        // random page per change.
        sql: r#"
ALTER TABLE raw_changes DROP CONSTRAINT raw_changes_event_key_key;
CREATE UNIQUE INDEX raw_changes_event ON raw_changes (commit_timestamp, event_key);
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
    id                  BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    object              TEXT   NOT NULL CHECK (object <> ''),
    record_id           TEXT   NOT NULL,
    rule                TEXT   NOT NULL,
    reason              TEXT   NOT NULL,
    parent_object       TEXT,
    parent_id           TEXT,
    event_key           TEXT   NOT NULL,
    log_offset          BIGINT,
    commit_timestamp_ms BIGINT NOT NULL,
    change              BYTEA,
    status              TEXT   NOT NULL CHECK (status IN ('held','release_requested',
                            'force_requested','released','discarded')),
    run_id              TEXT   NOT NULL,
    first_seen_ms       BIGINT NOT NULL,
    last_seen_ms        BIGINT NOT NULL,
    attempts            BIGINT NOT NULL,
    alert_after_ms      BIGINT,
    alerted_at_ms       BIGINT,
    resolved_at_ms      BIGINT,
    resolved_by         TEXT,
    note                TEXT,
    CHECK (change IS NOT NULL OR log_offset IS NOT NULL)
);
CREATE INDEX quarantine_record ON quarantine (object, record_id, status);
CREATE INDEX quarantine_parent ON quarantine (parent_object, parent_id, status);
CREATE INDEX quarantine_status ON quarantine (status, id);
CREATE TABLE dq_failures (
    id            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id        TEXT   NOT NULL,
    object        TEXT   NOT NULL,
    record_id     TEXT   NOT NULL,
    rule          TEXT   NOT NULL,
    severity      TEXT   NOT NULL CHECK (severity IN ('error','warn')),
    field         TEXT   NOT NULL,
    value         TEXT,
    message       TEXT   NOT NULL,
    event_key     TEXT   NOT NULL,
    created_at_ms BIGINT NOT NULL
);
CREATE INDEX dq_failures_run ON dq_failures (run_id, id);
CREATE TABLE dq_counts (
    run_id     TEXT   NOT NULL,
    object     TEXT   NOT NULL,
    rule       TEXT   NOT NULL,
    severity   TEXT   NOT NULL CHECK (severity IN ('error','warn')),
    failed     BIGINT NOT NULL,
    stored     BIGINT NOT NULL,
    over_cap   BIGINT NOT NULL,
    last_at_ms BIGINT NOT NULL,
    PRIMARY KEY (run_id, object, rule)
);
"#,
    },
    Migration {
        version: 7,
        name: "sync jobs: backfills, re-syncs, reconciliations, replays",
        sql: r#"
CREATE TABLE sync_jobs (
    id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind            TEXT    NOT NULL CHECK (kind IN ('backfill','resync','reconcile','replay')),
    object          TEXT    NOT NULL CHECK (object <> ''),
    reason          TEXT    NOT NULL,
    status          TEXT    NOT NULL CHECK (status IN ('pending','running','succeeded','failed',
                        'cancelled')),
    since_ms        BIGINT,
    until_ms        BIGINT,
    params          TEXT    NOT NULL,
    requested_by    TEXT    NOT NULL,
    resync_id       BIGINT,
    run_id          TEXT,
    bulk_job_id     TEXT,
    locator         TEXT,
    page_rows_done  BIGINT  NOT NULL DEFAULT 0,
    rows_total      BIGINT,
    rows_read       BIGINT  NOT NULL DEFAULT 0,
    rows_applied    BIGINT  NOT NULL DEFAULT 0,
    rows_skipped    BIGINT  NOT NULL DEFAULT 0,
    rows_held       BIGINT  NOT NULL DEFAULT 0,
    rows_deleted    BIGINT  NOT NULL DEFAULT 0,
    rows_failed     BIGINT  NOT NULL DEFAULT 0,
    api_calls       BIGINT  NOT NULL DEFAULT 0,
    requested_at_ms BIGINT  NOT NULL,
    started_at_ms   BIGINT,
    finished_at_ms  BIGINT,
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
        // `sync_jobs_kind_check` is the name Postgres gave migration 7's column constraint.
        sql: r#"
ALTER TABLE sync_jobs DROP CONSTRAINT sync_jobs_kind_check;
ALTER TABLE sync_jobs ADD CONSTRAINT sync_jobs_kind_check
    CHECK (kind IN ('backfill','resync','reconcile','replay','formula_refresh'));
ALTER TABLE sync_jobs ADD COLUMN watermark_ms BIGINT;
ALTER TABLE sync_jobs ADD COLUMN reread_from_ms BIGINT;
"#,
    },
    Migration {
        version: 9,
        name: "writeback: outbox, write ledger and its transitions",
        // Same tables and columns as SQLite's migration 9 (see there).
        sql: r#"
CREATE TABLE outbox (
    id                BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    source_system     TEXT    NOT NULL CHECK (source_system <> ''),
    idempotency_key   TEXT    NOT NULL CHECK (idempotency_key <> ''),
    object            TEXT,
    external_id_field TEXT,
    external_id       TEXT,
    record_id         TEXT,
    fields            TEXT,
    seen_version_ms   BIGINT,
    created_at_ms     BIGINT  NOT NULL
        DEFAULT (floor(extract(epoch FROM clock_timestamp()) * 1000))::BIGINT,
    ingested_at_ms    BIGINT,
    write_id          BIGINT,
    UNIQUE (source_system, idempotency_key)
);
CREATE INDEX outbox_waiting ON outbox (id) WHERE ingested_at_ms IS NULL;
CREATE TABLE writes (
    id                BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    source_system     TEXT    NOT NULL,
    idempotency_key   TEXT    NOT NULL,
    origin            TEXT    NOT NULL CHECK (origin IN ('api','outbox')),
    outbox_id         BIGINT,
    object            TEXT    NOT NULL,
    external_id_field TEXT,
    external_id       TEXT,
    record_id         TEXT,
    fields            TEXT    NOT NULL,
    seen_version_ms   BIGINT,
    state             TEXT    NOT NULL CHECK (state IN ('pending','sent','applied','confirmed',
                          'conflict','rejected','failed')),
    attempts          BIGINT  NOT NULL DEFAULT 0,
    last_error        TEXT,
    reason            TEXT,
    claimed_by        TEXT,
    echo_event_key    TEXT,
    created_at_ms     BIGINT  NOT NULL,
    updated_at_ms     BIGINT  NOT NULL,
    UNIQUE (source_system, idempotency_key)
);
CREATE INDEX writes_state ON writes (state, object, id);
CREATE INDEX writes_record ON writes (object, record_id, state);
CREATE TABLE write_transitions (
    write_id   BIGINT  NOT NULL,
    seq        BIGINT  NOT NULL,
    from_state TEXT,
    to_state   TEXT    NOT NULL,
    at_ms      BIGINT  NOT NULL,
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
ALTER TABLE sync_jobs ADD COLUMN attempts BIGINT NOT NULL DEFAULT 1;
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
    seq       BIGINT   PRIMARY KEY,
    actor     TEXT    NOT NULL,
    action    TEXT    NOT NULL,
    target    TEXT    NOT NULL,
    at_ms     BIGINT   NOT NULL,
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
        // Same tables as SQLite's migration 15.
        sql: r#"
ALTER TABLE sync_jobs DROP CONSTRAINT sync_jobs_kind_check;
ALTER TABLE sync_jobs ADD CONSTRAINT sync_jobs_kind_check
    CHECK (kind IN ('backfill','resync','reconcile','replay','formula_refresh','archive',
        'retention'));
CREATE TABLE archive_files (
    path          TEXT   PRIMARY KEY,
    object        TEXT   NOT NULL,
    day           TEXT   NOT NULL,
    rows          BIGINT NOT NULL,
    bytes         BIGINT NOT NULL,
    payload_bytes BIGINT NOT NULL,
    sha256        TEXT   NOT NULL,
    min_offset    BIGINT NOT NULL,
    max_offset    BIGINT NOT NULL,
    min_commit_ms BIGINT NOT NULL,
    max_commit_ms BIGINT NOT NULL,
    created_at_ms BIGINT NOT NULL
);
CREATE INDEX archive_files_partition ON archive_files (object, day);
CREATE TABLE archive_marks (
    id               INTEGER PRIMARY KEY CHECK (id = 1),
    archived_through BIGINT NOT NULL,
    updated_at_ms    BIGINT NOT NULL
);
CREATE TABLE audit_anchor (
    id             INTEGER PRIMARY KEY CHECK (id = 1),
    seq            BIGINT NOT NULL,
    hash           TEXT   NOT NULL,
    pruned_entries BIGINT NOT NULL,
    pruned_at_ms   BIGINT NOT NULL
);
"#,
    },
    Migration {
        version: 16,
        name: "freshness contract: sync_status_state and the sync_status view",
        // Same table and view as SQLite's migration 16; timestamps are timestamptz like the
        // curated tables' `_sf_*` metadata, and the view's clock is the server's now().
        sql: r#"
CREATE TABLE sync_status_state (
    object                TEXT        PRIMARY KEY CHECK (object <> ''),
    last_commit_at        TIMESTAMPTZ,
    last_applied_at       TIMESTAMPTZ,
    current_as_of         TIMESTAMPTZ,
    open_repairs          BIGINT      NOT NULL DEFAULT 0 CHECK (open_repairs >= 0),
    open_resyncs          BIGINT      NOT NULL DEFAULT 0 CHECK (open_resyncs >= 0),
    backfill_running      BOOLEAN     NOT NULL DEFAULT FALSE,
    last_reconcile_at     TIMESTAMPTZ,
    last_reconcile_result TEXT        CHECK (last_reconcile_result IN ('in_sync','drift',
                              'repaired','failed')),
    last_reconcile_detail TEXT,
    delayed_after_secs    BIGINT      NOT NULL CHECK (delayed_after_secs > 0),
    updated_at            TIMESTAMPTZ NOT NULL
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
        CASE WHEN backfill_running THEN 'a backfill is pending or running; ' ELSE '' END ||
        CASE WHEN last_reconcile_result = 'drift'
            THEN 'the last reconciliation found drift not repaired yet ('
                || coalesce(last_reconcile_detail, '') || '); '
            ELSE '' END ||
        CASE WHEN lag_seconds IS NULL THEN 'not yet caught up with the stream'
            WHEN lag_seconds > delayed_after_secs THEN 'not current for '
                || round(lag_seconds)::bigint || ' s (delayed after '
                || delayed_after_secs || ' s)'
            WHEN is_partial THEN ''
            ELSE 'caught up as of ' || round(lag_seconds)::bigint || ' s ago (delayed after '
                || delayed_after_secs || ' s)' END,
        '; ') AS status_reason
FROM (SELECT s.*,
        CASE WHEN s.current_as_of IS NULL THEN NULL
            ELSE greatest(0, round(extract(epoch FROM (now() - s.current_as_of))::numeric, 3))
                ::double precision END AS lag_seconds,
        (s.open_repairs > 0 OR s.open_resyncs > 0 OR s.backfill_running
            OR coalesce(s.last_reconcile_result = 'drift', FALSE)) AS is_partial
      FROM sync_status_state s) x;
"#,
    },
    Migration {
        version: 17,
        name: "delivery outbox, sink positions and delivery dead letters",
        sql: r#"
CREATE TABLE delivery_outbox (
    seq                 BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    object              TEXT NOT NULL,
    record_id           TEXT NOT NULL,
    change_type         TEXT NOT NULL,
    event_key           TEXT NOT NULL,
    commit_timestamp_ms BIGINT NOT NULL,
    applied_at_ms       BIGINT NOT NULL,
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
    position      BIGINT NOT NULL,
    delivered     BIGINT NOT NULL DEFAULT 0,
    updated_at_ms BIGINT NOT NULL,
    PRIMARY KEY (sink, object)
);
CREATE TABLE delivery_dead_letters (
    id                 BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    sink               TEXT NOT NULL,
    object             TEXT NOT NULL,
    record_id          TEXT NOT NULL,
    seq                BIGINT NOT NULL,
    event_key          TEXT NOT NULL,
    change             TEXT NOT NULL,
    reason             TEXT NOT NULL,
    attempts           BIGINT NOT NULL,
    first_failed_at_ms BIGINT NOT NULL,
    state              TEXT NOT NULL CHECK (state IN ('pending','redrive','delivered','discarded')),
    note               TEXT,
    created_at_ms      BIGINT NOT NULL,
    updated_at_ms      BIGINT NOT NULL,
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
    epoch          BIGINT NOT NULL,
    acquired_at_ms BIGINT NOT NULL,
    renewed_at_ms  BIGINT NOT NULL,
    expires_at_ms  BIGINT NOT NULL
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
    deliveries           BIGINT NOT NULL CHECK (deliveries >= 1),
    first_received_at_ms BIGINT NOT NULL,
    last_received_at_ms  BIGINT NOT NULL,
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
    id             BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    channel        TEXT   NOT NULL CHECK (channel <> ''),
    replay_id      BYTEA  NOT NULL,
    name           TEXT   NOT NULL,
    event_uuid     TEXT   NOT NULL,
    schema_id      TEXT   NOT NULL,
    created_ms     BIGINT NOT NULL,
    fields         TEXT   NOT NULL,
    payload        BYTEA  NOT NULL,
    received_at_ms BIGINT NOT NULL,
    UNIQUE (channel, replay_id)
);
CREATE TABLE platform_event_checkpoints (
    channel       TEXT   PRIMARY KEY CHECK (channel <> ''),
    replay_id     BYTEA  NOT NULL,
    updated_at_ms BIGINT NOT NULL
);
CREATE TABLE platform_events_out (
    id                 BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name               TEXT   NOT NULL CHECK (name <> ''),
    idempotency_key    TEXT   NOT NULL CHECK (idempotency_key <> ''),
    event_uuid         TEXT   NOT NULL,
    source             TEXT   NOT NULL,
    fields             TEXT   NOT NULL,
    state              TEXT   NOT NULL CHECK (state IN ('pending','published','dead','discarded')),
    attempts           BIGINT NOT NULL DEFAULT 0,
    next_attempt_at_ms BIGINT NOT NULL,
    claimed_by         TEXT,
    claimed_until_ms   BIGINT,
    replay_id          BYTEA,
    last_error         TEXT,
    note               TEXT,
    created_at_ms      BIGINT NOT NULL,
    updated_at_ms      BIGINT NOT NULL,
    published_at_ms    BIGINT,
    UNIQUE (name, idempotency_key)
);
CREATE INDEX platform_events_out_due ON platform_events_out (state, next_attempt_at_ms, id);
"#,
    },
];

/// The change log in a Postgres database (tables in the connection's `search_path` schema).
pub struct PostgresChangeLog {
    client: Mutex<Client>,
    connection: tokio::task::JoinHandle<()>,
    /// A second connection for reading the log and loading current rows, so the apply stage
    /// reads while the first one appends or commits (each statement sees committed data only;
    /// appends lock `raw_changes`, so committed offsets are always a prefix of the log).
    reader: Mutex<Client>,
    reader_connection: tokio::task::JoinHandle<()>,
    /// Prepared statements of the reader connection by SQL text.
    reader_statements: parking_lot::Mutex<HashMap<String, Statement>>,
    /// A third connection for ingest appends, so an append and a curated commit run in two
    /// server processes at once (they touch different tables; appends lock `raw_changes`).
    appender: Mutex<Client>,
    appender_connection: tokio::task::JoinHandle<()>,
    /// Registered curated models and the PII keyring.
    registry: Registry,
    /// Prepared statements of this connection by SQL text (used while holding `client`).
    statements: parking_lot::Mutex<HashMap<String, Statement>>,
    /// This connection holds the single-applier advisory lock.
    apply_locked: AtomicBool,
}

impl std::fmt::Debug for PostgresChangeLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresChangeLog").finish_non_exhaustive()
    }
}

impl Drop for PostgresChangeLog {
    fn drop(&mut self) {
        self.connection.abort();
        self.reader_connection.abort();
        self.appender_connection.abort();
    }
}

/// One connection and the task that drives it.
async fn open_connection(config: &Config) -> Result<(Client, tokio::task::JoinHandle<()>)> {
    let (client, connection) = config
        .connect(NoTls)
        .await
        .map_err(|e| StoreError::postgres("connect", e))?;
    let connection = tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(error = %e, "Postgres connection closed with an error.");
        }
    });
    // Rows of 3–8 KB are TOAST-compressed; LZ4 costs the server a fraction of the default
    // pglz's CPU. A server built without LZ4 keeps pglz.
    if let Err(e) = client
        .batch_execute("SET default_toast_compression = 'lz4'")
        .await
    {
        tracing::debug!(error = %e, "Postgres without LZ4 TOAST compression; keeping pglz.");
    }
    Ok((client, connection))
}

impl PostgresChangeLog {
    /// Connects with a libpq-style URL or key=value string and applies pending migrations.
    pub async fn connect(url: &str) -> Result<PostgresChangeLog> {
        let config: Config =
            url.parse()
                .map_err(|e: tokio_postgres::Error| StoreError::InvalidInput {
                    backend: BACKEND,
                    op: "parse connection string",
                    reason: e.to_string(),
                })?;
        PostgresChangeLog::connect_with(&config).await
    }

    /// Connects with a parsed config (no TLS: loopback or a trusted network) and migrates.
    pub async fn connect_with(config: &Config) -> Result<PostgresChangeLog> {
        let (client, connection) = open_connection(config).await?;
        let (reader, reader_connection) = open_connection(config).await?;
        let (appender, appender_connection) = open_connection(config).await?;
        let store = PostgresChangeLog {
            client: Mutex::new(client),
            connection,
            reader: Mutex::new(reader),
            reader_connection,
            reader_statements: parking_lot::Mutex::new(HashMap::new()),
            appender: Mutex::new(appender),
            appender_connection,
            registry: Registry::new(Dialect::Postgres),
            statements: parking_lot::Mutex::new(HashMap::new()),
            apply_locked: AtomicBool::new(false),
        };
        store.migrate().await?;
        let models = warehouse::load_models(&*store.client.lock().await).await?;
        store.registry.load(models)?;
        Ok(store)
    }

    /// Sets (or clears) the keyring that seals PII columns, raw payloads of objects with PII
    /// and dead letters. Takes effect for calls that start afterwards.
    pub fn set_keyring(&self, keyring: Option<Arc<Keyring>>) {
        self.registry.set_keyring(keyring);
    }

    /// Exclusive use of the connection, for curated writers that open their own transaction and
    /// call [`set_applied_offset_in`] inside it.
    pub async fn client(&self) -> MutexGuard<'_, Client> {
        self.client.lock().await
    }

    /// Raw changes and dead letters with the checkpoint, in one transaction.
    async fn append(
        &self,
        channel: &str,
        changes: &[RawChange],
        dead_letters: &[DeadLetter],
        checkpoint: &ReplayId,
        fence: Option<&crate::lease::Fence>,
    ) -> Result<AppendOutcome> {
        check_name("append batch", "channel", channel)?;
        let ctx = self.registry.ctx();
        let payloads = ctx.encode_raw_batch(changes)?;
        let mut client = self.appender.lock().await;
        let tx = client
            .transaction()
            .await
            .map_err(|e| StoreError::postgres("begin append", e))?;
        if let Some(fence) = fence {
            lease::check_fence(&tx, fence).await?;
        }
        if changes.is_empty() && dead_letters.is_empty() {
            return set_checkpoint_in(tx, channel, checkpoint).await;
        }
        tx.batch_execute("LOCK TABLE raw_changes IN SHARE ROW EXCLUSIVE MODE")
            .await
            .map_err(|e| StoreError::postgres("lock raw_changes", e))?;
        let stmt = tx
            .prepare(
                "INSERT INTO raw_changes (channel, event_key, replay_id, schema_id, entity,
                     change_type, commit_timestamp, commit_number, sequence_number, payload,
                     appended_at_ms)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
                 ON CONFLICT (commit_timestamp, event_key) DO NOTHING
                 RETURNING log_offset",
            )
            .await
            .map_err(|e| StoreError::postgres("prepare append", e))?;
        let now = now_ms();
        // All inserts in flight at once: tokio-postgres pipelines them on the connection in
        // submission order (one round trip per batch instead of one per change), and they
        // execute in that order inside the transaction.
        let inserts = changes
            .iter()
            .zip(&payloads)
            .enumerate()
            .map(|(index, (c, payload))| {
                let tx = &tx;
                let stmt = &stmt;
                async move {
                    let rejected = |e: tokio_postgres::Error| StoreError::RejectedChange {
                        backend: BACKEND,
                        channel: channel.to_string(),
                        index,
                        event_key: c.event_key.to_string(),
                        source: Box::new(e),
                    };
                    let row = tx
                        .query_opt(
                            stmt,
                            &[
                                &channel,
                                &c.event_key.as_str(),
                                &c.replay_id.as_bytes(),
                                &c.schema_id,
                                &c.entity,
                                &c.change_type.as_str(),
                                &c.version.commit_timestamp,
                                &c.version.commit_number,
                                &c.version.sequence_number,
                                &&payload[..],
                                &now,
                            ],
                        )
                        .await
                        .map_err(rejected)?;
                    row.map(|r| r.try_get::<_, i64>(0).map_err(rejected))
                        .transpose()
                }
            });
        let offsets = futures::future::try_join_all(inserts).await?;
        let mut out = AppendOutcome::default();
        for off in offsets {
            match off {
                Some(off) => {
                    out.appended += 1;
                    out.last_offset = Some(off.max(0) as LogOffset);
                }
                None => out.duplicates += 1,
            }
        }
        warehouse::insert_dead_letters(&tx, &ctx, dead_letters).await?;
        set_checkpoint_in(tx, channel, checkpoint).await?;
        Ok(out)
    }

    async fn migrate(&self) -> Result<()> {
        let mut client = self.client.lock().await;
        let tx = client
            .transaction()
            .await
            .map_err(|e| StoreError::postgres("begin migrations", e))?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK_KEY])
            .await
            .map_err(|e| StoreError::postgres("take migration lock", e))?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                 version       BIGINT PRIMARY KEY,
                 name          TEXT   NOT NULL,
                 applied_at_ms BIGINT NOT NULL
             )",
        )
        .await
        .map_err(|e| StoreError::postgres("create schema_migrations", e))?;
        let current: i64 = tx
            .query_one(
                "SELECT COALESCE(MAX(version), 0)::BIGINT FROM schema_migrations",
                &[],
            )
            .await
            .and_then(|r| r.try_get(0))
            .map_err(|e| StoreError::postgres("read schema version", e))?;
        let known = migrate::latest(MIGRATIONS);
        if current > known {
            return Err(StoreError::SchemaTooNew {
                backend: BACKEND,
                found: current,
                known,
            });
        }
        for m in MIGRATIONS.iter().filter(|m| m.version > current) {
            tx.batch_execute(m.sql)
                .await
                .map_err(|e| StoreError::postgres("apply migration", e))?;
            tx.execute(
                "INSERT INTO schema_migrations (version, name, applied_at_ms) VALUES ($1, $2, $3)",
                &[&m.version, &m.name, &now_ms()],
            )
            .await
            .map_err(|e| StoreError::postgres("record migration", e))?;
            tracing::info!(
                version = m.version,
                name = m.name,
                "Applied Postgres migration."
            );
        }
        tx.commit()
            .await
            .map_err(|e| StoreError::postgres("commit migrations", e))
    }
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

/// Writes `channel`'s checkpoint in `tx` and commits it.
async fn set_checkpoint_in(
    tx: Transaction<'_>,
    channel: &str,
    checkpoint: &ReplayId,
) -> Result<AppendOutcome> {
    tx.execute(
        "INSERT INTO checkpoints (channel, replay_id, updated_at_ms) VALUES ($1, $2, $3)
         ON CONFLICT (channel) DO UPDATE SET replay_id = excluded.replay_id,
             updated_at_ms = excluded.updated_at_ms",
        &[&channel, &checkpoint.as_bytes(), &now_ms()],
    )
    .await
    .map_err(|e| StoreError::postgres("write checkpoint", e))?;
    tx.commit()
        .await
        .map_err(|e| StoreError::postgres("commit append", e))?;
    Ok(AppendOutcome::default())
}

/// Sets the apply offset of `consumer` inside the caller's transaction (never backwards), so
/// curated rows and the offset commit together.
pub async fn set_applied_offset_in(
    tx: &Transaction<'_>,
    consumer: &str,
    offset: LogOffset,
) -> Result<()> {
    check_name("set applied offset", "consumer", consumer)?;
    let current = tx
        .query_opt(
            "SELECT log_offset FROM apply_offsets WHERE consumer = $1 FOR UPDATE",
            &[&consumer],
        )
        .await
        .map_err(|e| StoreError::postgres("read applied offset", e))?
        .map(|r| r.try_get::<_, i64>(0))
        .transpose()
        .map_err(|e| StoreError::postgres("read applied offset", e))?;
    if let Some(cur) = current {
        if (cur.max(0) as u64) > offset {
            return Err(StoreError::OffsetRegression {
                backend: BACKEND,
                consumer: consumer.to_string(),
                current: cur.max(0) as u64,
                requested: offset,
            });
        }
    }
    tx.execute(
        "INSERT INTO apply_offsets (consumer, log_offset, updated_at_ms) VALUES ($1, $2, $3)
         ON CONFLICT (consumer) DO UPDATE SET log_offset = excluded.log_offset,
             updated_at_ms = excluded.updated_at_ms",
        &[&consumer, &to_i64(offset), &now_ms()],
    )
    .await
    .map_err(|e| StoreError::postgres("write applied offset", e))?;
    Ok(())
}

impl PostgresChangeLog {
    /// Raw changes matching `condition` (a WHERE clause with its ORDER BY / LIMIT), read on the
    /// reader connection; payloads opened and decompressed after it is released.
    async fn read_log_where(
        &self,
        op: &'static str,
        condition: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<LoggedChange>> {
        let ctx = self.registry.ctx();
        let client = self.reader.lock().await;
        let rows = client
            .query(
                &format!(
                    "SELECT log_offset, channel, event_key, replay_id, schema_id, entity,
                         change_type, commit_timestamp, commit_number, sequence_number, payload
                     FROM raw_changes WHERE {condition}"
                ),
                params,
            )
            .await
            .map_err(|e| StoreError::postgres(op, e))?;
        drop(client);
        let get = |e| StoreError::postgres("decode log row", e);
        let mut stored = Vec::with_capacity(rows.len());
        for r in rows {
            stored.push(StoredLogRow {
                offset: r.try_get(0).map_err(get)?,
                channel: r.try_get(1).map_err(get)?,
                event_key: r.try_get(2).map_err(get)?,
                replay_id: r.try_get(3).map_err(get)?,
                schema_id: r.try_get(4).map_err(get)?,
                entity: r.try_get(5).map_err(get)?,
                change_type: r.try_get(6).map_err(get)?,
                version: RecordVersion {
                    commit_timestamp: r.try_get(7).map_err(get)?,
                    commit_number: r.try_get(8).map_err(get)?,
                    sequence_number: r.try_get(9).map_err(get)?,
                },
                payload: r.try_get(10).map_err(get)?,
            });
        }
        crate::warehouse::cpu_bound(|| {
            stored
                .into_iter()
                .map(|r| r.decode(BACKEND, &ctx))
                .collect()
        })
    }
}

#[async_trait]
impl ChangeLog for PostgresChangeLog {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    async fn append_batch(
        &self,
        channel: &str,
        changes: &[RawChange],
        checkpoint: &ReplayId,
    ) -> Result<AppendOutcome> {
        self.append(channel, changes, &[], checkpoint, None).await
    }

    async fn checkpoint(&self, channel: &str) -> Result<Option<ReplayId>> {
        let client = self.client.lock().await;
        let row = client
            .query_opt(
                "SELECT replay_id FROM checkpoints WHERE channel = $1",
                &[&channel],
            )
            .await
            .map_err(|e| StoreError::postgres("read checkpoint", e))?;
        row.map(|r| r.try_get::<_, Vec<u8>>(0).map(ReplayId::from_bytes))
            .transpose()
            .map_err(|e| StoreError::postgres("read checkpoint", e))
    }

    async fn read_from(&self, from: LogOffset, limit: usize) -> Result<Vec<LoggedChange>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read_log_where(
            "read log",
            "log_offset >= $1 ORDER BY log_offset LIMIT $2",
            &[&to_i64(from), &limit],
        )
        .await
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
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read_log_where(
            "read log of an object",
            "entity = $1 AND log_offset >= $2 AND log_offset <= $3 ORDER BY log_offset LIMIT $4",
            &[&entity, &to_i64(from), &to_i64(to), &limit],
        )
        .await
    }

    async fn read_offsets(&self, offsets: &[LogOffset]) -> Result<Vec<LoggedChange>> {
        let mut offsets: Vec<i64> = offsets.iter().map(|o| to_i64(*o)).collect();
        offsets.sort_unstable();
        offsets.dedup();
        let mut out = Vec::with_capacity(offsets.len());
        for chunk in offsets.chunks(5_000) {
            out.extend(
                self.read_log_where(
                    "read log entries",
                    "log_offset = ANY($1) ORDER BY log_offset",
                    &[&chunk],
                )
                .await?,
            );
        }
        Ok(out)
    }

    async fn locate(&self, point: &LogPoint) -> Result<Option<LogMark>> {
        let cols = "log_offset, channel, replay_id, commit_timestamp";
        let client = self.reader.lock().await;
        let row = match point {
            LogPoint::Oldest { channel: None } => {
                client
                    .query_opt(
                        &format!("SELECT {cols} FROM raw_changes ORDER BY log_offset LIMIT 1"),
                        &[],
                    )
                    .await
            }
            LogPoint::Oldest {
                channel: Some(channel),
            } => {
                client
                    .query_opt(
                        &format!(
                            "SELECT {cols} FROM raw_changes WHERE channel = $1 \
                             ORDER BY log_offset LIMIT 1"
                        ),
                        &[channel],
                    )
                    .await
            }
            LogPoint::FirstCommittedSince { entity, commit_ms } => {
                client
                    .query_opt(
                        &format!(
                            "SELECT {cols} FROM raw_changes WHERE log_offset = (SELECT \
                             min(log_offset) FROM raw_changes WHERE commit_timestamp >= $2 \
                             AND entity = $1)"
                        ),
                        &[entity, commit_ms],
                    )
                    .await
            }
            LogPoint::ReplayId { channel, replay_id } => {
                client
                    .query_opt(
                        &format!(
                            "SELECT {cols} FROM raw_changes WHERE channel = $1 AND replay_id = $2 \
                             ORDER BY log_offset LIMIT 1"
                        ),
                        &[channel, &replay_id.as_bytes()],
                    )
                    .await
            }
            LogPoint::FirstAfter { entity, after } => {
                client
                    .query_opt(
                        &format!(
                            "SELECT {cols} FROM raw_changes WHERE entity = $1 AND log_offset > $2 \
                             ORDER BY log_offset LIMIT 1"
                        ),
                        &[entity, &to_i64(*after)],
                    )
                    .await
            }
        }
        .map_err(|e| StoreError::postgres("locate in log", e))?;
        drop(client);
        let Some(r) = row else {
            return Ok(None);
        };
        let get = |e| StoreError::postgres("locate in log", e);
        Ok(Some(LogMark {
            offset: r.try_get::<_, i64>(0).map_err(get)?.max(0) as LogOffset,
            channel: r.try_get(1).map_err(get)?,
            replay_id: ReplayId::from_bytes(r.try_get::<_, Vec<u8>>(2).map_err(get)?),
            commit_timestamp: r.try_get(3).map_err(get)?,
        }))
    }

    async fn applied_offset(&self, consumer: &str) -> Result<Option<LogOffset>> {
        let client = self.client.lock().await;
        let row = client
            .query_opt(
                "SELECT log_offset FROM apply_offsets WHERE consumer = $1",
                &[&consumer],
            )
            .await
            .map_err(|e| StoreError::postgres("read applied offset", e))?;
        row.map(|r| r.try_get::<_, i64>(0).map(|v| v.max(0) as LogOffset))
            .transpose()
            .map_err(|e| StoreError::postgres("read applied offset", e))
    }

    async fn set_applied_offset(&self, consumer: &str, offset: LogOffset) -> Result<()> {
        let mut client = self.client.lock().await;
        let tx = client
            .transaction()
            .await
            .map_err(|e| StoreError::postgres("begin set applied offset", e))?;
        set_applied_offset_in(&tx, consumer, offset).await?;
        tx.commit()
            .await
            .map_err(|e| StoreError::postgres("commit applied offset", e))
    }

    async fn applied_migrations(&self) -> Result<Vec<AppliedMigration>> {
        let client = self.client.lock().await;
        let rows = client
            .query(
                "SELECT version, name, applied_at_ms FROM schema_migrations ORDER BY version",
                &[],
            )
            .await
            .map_err(|e| StoreError::postgres("read migrations", e))?;
        rows.iter()
            .map(|r| {
                Ok(AppliedMigration {
                    version: r.try_get(0)?,
                    name: r.try_get(1)?,
                    applied_at_ms: r.try_get(2)?,
                })
            })
            .collect::<std::result::Result<Vec<_>, tokio_postgres::Error>>()
            .map_err(|e| StoreError::postgres("read migrations", e))
    }
}
