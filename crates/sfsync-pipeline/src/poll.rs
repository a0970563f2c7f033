//! Polling: objects synced with `mode = "poll"` (no Change Data Capture) are read by
//! SystemModstamp through SOQL `queryAll` (REST query + queryMore), and each polled row becomes
//! one raw-log entry the normal apply path merges into the curated tables.
//!
//! Guarantees:
//! - **No loss at the cursor boundary.** Rows are read in `ORDER BY SystemModstamp, Id` order and
//!   paged by a `(SystemModstamp, Id)` keyset (never OFFSET), so any number of rows sharing one
//!   timestamp is read completely, page after page, and the cursor never passes a row that was
//!   not read. Every round starts `overlap` before the cursor, so a transaction that took its
//!   SystemModstamp before the cursor but committed after the last round (commit-order skew) is
//!   still read.
//! - **No duplicates.** A row's event key is `poll-<SystemModstamp ms>/0/<Id>`: the raw log drops
//!   a row it already holds (overlap re-reads, a restart), and rows this process already logged
//!   are skipped before the write. Its record version is `(SystemModstamp, 0, 0)`, like every
//!   snapshot read: it never overwrites a change of the record that is as new or newer.
//! - **Checkpoint with the data.** The cursor (the highest `(SystemModstamp, Id)` read) is the
//!   channel `/poll/<Object>`'s checkpoint, stored in the same transaction as the rows of the page
//!   it covers. A crash re-reads from the stored cursor less the overlap.
//! - **Deletes and undeletes.** `queryAll` returns recycle-bin rows with `IsDeleted = true` and a
//!   new SystemModstamp: they apply as deletes; a later live row of the record (undelete) applies
//!   as a full row that revives it. Purged records (hard delete, emptied recycle bin) are not
//!   returned by any query: reconciliation finds them.
//!
//! A large backlog (a full first page and at least [`PollConfig::bulk_threshold`] rows left) is
//! read through one Bulk API 2.0 `queryAll` job over a SystemModstamp window instead, with the
//! same event keys and checkpointing ([`crate::poll_bulk`]).
//!
//! Every call goes through the API budget governor in the lane the caller gives the client
//! (`sfsync run` uses the gap-repair lane: polling is the flow's ingest itself, ranked after
//! writeback and before reconciliation and backfills).

use std::collections::BTreeSet;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value as J;
use sfsync_core::{ChangeType, EventKey, RecordVersion, ReplayId};
use sfsync_salesforce::rest::{QueryOptions, QueryPage};
use sfsync_salesforce::SalesforceClient;
use sfsync_store::{ChangeSource, DeadLetter, RawChange, Warehouse};
use tokio::sync::{watch, Notify};

use crate::convert;
use crate::error::{chain, PipelineError, Result};
use crate::model::ObjectMapping;
use crate::normalize::{self, Normalized};
use crate::stats::PipelineStats;

/// The `schema_id` of raw changes made from polled rows (their payload is the row's JSON as
/// `queryAll` returned it, not Avro).
pub const POLL_SCHEMA_ID: &str = "sfsync:poll:v1";

/// Channels of polled objects start with this.
pub const CHANNEL_PREFIX: &str = "/poll/";

/// The change type of a polled live row (a deleted one is `DELETE`).
pub const CHANGE_TYPE: &str = "POLL";

/// The raw-log channel (and checkpoint name) of a polled object.
pub fn channel(object: &str) -> String {
    format!("{CHANNEL_PREFIX}{object}")
}

/// Whether `channel` is fed by polling (not a Pub/Sub subscription).
pub fn is_poll_channel(channel: &str) -> bool {
    channel.starts_with(CHANNEL_PREFIX)
}

/// Whether a raw change was made from a polled row.
pub fn is_polled(schema_id: &str) -> bool {
    schema_id == POLL_SCHEMA_ID
}

/// How an object is polled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PollConfig {
    /// Between the end of one round and the start of the next.
    pub interval: Duration,
    /// How far before the cursor each round starts (commit-order skew).
    pub overlap: Duration,
    /// Rows per keyset query (`LIMIT`); each query is read through queryMore pages.
    pub page_records: usize,
    /// `Sforce-Query-Options: batchSize` of those pages (200–2000).
    pub batch_size: u32,
    /// A round whose first keyset query past the stored cursor comes back full and that has at
    /// least this many rows after the cursor left reads them through one Bulk API 2.0 job ([`crate::poll_bulk`]); 0: never.
    pub bulk_threshold: u64,
    /// `maxRecords` per Bulk result page.
    pub bulk_page_records: u64,
}

impl Default for PollConfig {
    fn default() -> Self {
        PollConfig {
            interval: Duration::from_secs(60),
            overlap: Duration::from_secs(60),
            page_records: 2_000,
            batch_size: 2_000,
            bulk_threshold: 0,
            bulk_page_records: 50_000,
        }
    }
}

/// A position in `ORDER BY SystemModstamp, Id` order: rows after it are `SystemModstamp > ms OR
/// (SystemModstamp = ms AND Id > id)`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cursor {
    pub modstamp_ms: i64,
    /// Empty: before every row of `modstamp_ms`.
    pub id: String,
}

impl Cursor {
    const PREFIX: &'static str = "poll:v1:";

    /// The checkpoint's bytes: `poll:v1:<ms>:<id>`.
    pub fn to_replay_id(&self) -> ReplayId {
        ReplayId::from_bytes(
            format!("{}{}:{}", Self::PREFIX, self.modstamp_ms, self.id).into_bytes(),
        )
    }

    /// A stored checkpoint back (`None`: not a poll cursor).
    pub fn from_replay_id(r: &ReplayId) -> Option<Cursor> {
        let s = std::str::from_utf8(r.as_bytes()).ok()?;
        let (ms, id) = s.strip_prefix(Self::PREFIX)?.split_once(':')?;
        Some(Cursor {
            modstamp_ms: ms.parse().ok()?,
            id: id.to_string(),
        })
    }
}

/// The keyset query of one page: every mapped field, SystemModstamp and IsDeleted, rows after
/// `after` (all when `None`), in cursor order, at most `limit`.
pub fn page_soql(mapping: &ObjectMapping, after: Option<&Cursor>, limit: usize) -> String {
    let mut soql = crate::jobs::snapshot_soql(mapping, None, None);
    if let Some(c) = after {
        let t = crate::jobs::soql_datetime(c.modstamp_ms);
        soql.push_str(&format!(
            " WHERE (SystemModstamp > {t} OR (SystemModstamp = {t} AND Id > '{}'))",
            c.id.replace('\\', "\\\\").replace('\'', "\\'")
        ));
    }
    soql.push_str(&format!(
        " ORDER BY SystemModstamp ASC, Id ASC LIMIT {}",
        limit.max(1)
    ));
    soql
}

/// A polled row's place in cursor order.
pub fn row_cursor(record: &serde_json::Map<String, J>) -> std::result::Result<Cursor, String> {
    let id = record
        .get("Id")
        .and_then(J::as_str)
        .filter(|s| !s.is_empty())
        .ok_or("the row has no Id")?;
    let stamp = record
        .get("SystemModstamp")
        .and_then(J::as_str)
        .ok_or_else(|| format!("row {id} has no SystemModstamp"))?;
    let ms =
        convert::parse_datetime(stamp).map_err(|e| format!("row {id}: SystemModstamp: {e}"))?;
    Ok(Cursor {
        modstamp_ms: ms,
        id: id.to_string(),
    })
}

/// The raw-log entry of a polled row of `object`.
pub fn to_raw_change(
    object: &str,
    record: &serde_json::Map<String, J>,
) -> std::result::Result<RawChange, String> {
    let at = row_cursor(record)?;
    let deleted = record
        .get("IsDeleted")
        .and_then(J::as_bool)
        .unwrap_or(false);
    let mut row = record.clone();
    row.remove("attributes");
    let payload = serde_json::to_vec(&row).map_err(|e| format!("encoding: {e}"))?;
    Ok(RawChange {
        event_key: EventKey::new(&transaction_key(at.modstamp_ms), 0, &at.id),
        replay_id: at.to_replay_id(),
        schema_id: POLL_SCHEMA_ID.to_string(),
        entity: object.to_string(),
        change_type: if deleted {
            ChangeType::Delete
        } else {
            ChangeType::Update
        },
        version: RecordVersion {
            commit_timestamp: at.modstamp_ms,
            commit_number: 0,
            sequence_number: 0,
        },
        payload: payload.into(),
    })
}

fn transaction_key(modstamp_ms: i64) -> String {
    format!("poll-{modstamp_ms}")
}

/// Normalises a raw change made from a polled row: a full row (deleted or live) as of its
/// SystemModstamp.
pub fn normalize(mapping: &ObjectMapping, raw: &RawChange) -> Result<Normalized> {
    let record: serde_json::Map<String, J> = serde_json::from_slice(&raw.payload).map_err(|e| {
        PipelineError::bad_change(
            "poll",
            mapping.object(),
            "?",
            format!("stored row does not parse: {e}"),
        )
    })?;
    let mut rc = normalize::from_record(mapping, &record)?;
    rc.change_type = if rc.deleted { "DELETE" } else { CHANGE_TYPE };
    rc.event_key = raw.event_key.as_str().to_string();
    rc.transaction_key = transaction_key(rc.version.commit_timestamp);
    rc.replay_id = Some(raw.replay_id.clone());
    rc.source = ChangeSource::Poll;
    Ok(Normalized::Records(vec![rc]))
}

/// One polled object's ingest task.
pub struct ObjectPoll {
    pub mapping: ObjectMapping,
    pub channel: String,
    pub store: Arc<dyn Warehouse>,
    /// The REST client, in the lane polling is charged to.
    pub client: SalesforceClient,
    pub stats: Arc<PipelineStats>,
    /// Woken after every append.
    pub appended: Arc<Notify>,
    pub config: PollConfig,
    /// The channel's lease (one poller across the deployment): rounds run only while it is
    /// held, and every store write is fenced by it.
    pub lease: Option<watch::Receiver<Option<sfsync_store::Fence>>>,
    /// Set for a CDC object polled while its stream is down ([`crate::ingest::Fallback`]): once
    /// it turns true, the poller runs one more round that starts after that moment, then stops.
    pub finish: Option<watch::Receiver<bool>>,
}

/// What one round did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RoundOutcome {
    pub rows: u64,
    pub appended: u64,
    pub duplicates: u64,
    pub calls: u64,
}

impl ObjectPoll {
    /// Polls every [`PollConfig::interval`] until `shutdown` turns true (the page in hand is
    /// committed first). A failed round is logged, counted and retried with backoff; the
    /// checkpoint keeps everything committed before it.
    ///
    /// With [`ObjectPoll::finish`]: the first round that starts after it turned true and
    /// succeeds is the last one.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut seen = BTreeSet::new();
        let mut failures = 0u32;
        let mut finish = self.finish.clone();
        loop {
            if *shutdown.borrow() {
                return;
            }
            let last = finish.as_mut().is_some_and(|f| *f.borrow_and_update());
            let fence = match self.lease.clone() {
                None => None,
                Some(mut rx) => {
                    let got = tokio::select! {
                        f = rx.wait_for(|f| f.is_some()) => f.map(|f| f.clone()).ok().flatten(),
                        _ = shutdown.changed() => return,
                    };
                    match got {
                        Some(f) => Some(f),
                        None => return,
                    }
                }
            };
            let wait = match self.round(&mut seen, fence.as_ref(), &shutdown).await {
                Ok(out) => {
                    failures = 0;
                    tracing::debug!(channel = %self.channel, rows = out.rows, appended = out.appended, calls = out.calls, "Poll round done.");
                    if last && !*shutdown.borrow() {
                        tracing::info!(channel = %self.channel, "Final poll round done; the stream carries the object again.");
                        return;
                    }
                    self.config.interval
                }
                Err(e) => {
                    failures += 1;
                    self.stats.errors.fetch_add(1, Relaxed);
                    let delay = Duration::from_millis((500u64 << failures.min(6)).min(30_000))
                        .min(self.config.interval.max(Duration::from_millis(500)));
                    tracing::warn!(channel = %self.channel, attempt = failures, error = %chain(&e), "Poll round failed; retrying in {delay:?}.");
                    delay
                }
            };
            let finishing = async {
                match finish.as_mut() {
                    Some(f) if !last => {
                        if f.wait_for(|done| *done).await.is_err() {
                            std::future::pending::<()>().await;
                        }
                    }
                    _ => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = finishing => {}
                _ = shutdown.changed() => return,
            }
        }
    }

    /// One round: from the stored cursor less the overlap up to the tip, page by page, each page
    /// appended with the new cursor in one transaction. `seen` holds the (SystemModstamp, Id) of
    /// rows this process logged (pruned below the round's start).
    pub async fn round(
        &self,
        seen: &mut BTreeSet<(i64, String)>,
        fence: Option<&sfsync_store::Fence>,
        shutdown: &watch::Receiver<bool>,
    ) -> Result<RoundOutcome> {
        let mut out = RoundOutcome::default();
        let r = self.round_into(seen, fence, shutdown, &mut out).await;
        // Calls of a failed round count too: Salesforce counted them against the org's limits.
        self.stats.add_poll_calls(&self.channel, out.calls);
        r.map(|()| out)
    }

    async fn round_into(
        &self,
        seen: &mut BTreeSet<(i64, String)>,
        fence: Option<&sfsync_store::Fence>,
        shutdown: &watch::Receiver<bool>,
        out: &mut RoundOutcome,
    ) -> Result<()> {
        let started = crate::apply::now_ms();
        let stored = self.store.checkpoint(&self.channel).await?;
        let mut cursor = match &stored {
            None => None,
            Some(r) => Some(Cursor::from_replay_id(r).ok_or_else(|| {
                PipelineError::config(
                    self.mapping.object(),
                    format!(
                        "the checkpoint of {} is not a poll cursor ({}); remove it to re-read the object",
                        self.channel,
                        r.to_hex()
                    ),
                )
            })?),
        };
        if let Some(c) = &cursor {
            self.stats.poll_cursor(&self.channel, c.modstamp_ms);
        }
        let overlap = self.config.overlap.as_millis() as i64;
        // Start `overlap` before the cursor, before every row of that millisecond.
        let mut after = cursor.as_ref().map(|c| Cursor {
            modstamp_ms: c.modstamp_ms - overlap,
            id: String::new(),
        });
        if let Some(a) = &after {
            let floor = (a.modstamp_ms, String::new());
            *seen = seen.split_off(&floor);
        }
        let opts = QueryOptions {
            batch_size: Some(self.config.batch_size.clamp(200, 2_000)),
            include_deleted: true,
        };
        // The Bulk decision is taken once, at the first full query that reads past the stored
        // cursor: pages of the overlap alone are re-reads, not a backlog.
        let mut bulk_tried = false;
        let start = cursor.clone();
        loop {
            let soql = page_soql(&self.mapping, after.as_ref(), self.config.page_records);
            let page = self.client.query_page(&soql, &opts).await;
            out.calls += 1;
            let mut page: QueryPage = page?;
            let mut in_query = 0usize;
            loop {
                in_query += page.records.len();
                let last = self
                    .commit_page(&page.records, &mut cursor, seen, fence, out)
                    .await?;
                if let Some(l) = last {
                    after = Some(l);
                }
                let next = page.next_records_url.clone().filter(|u| !u.is_empty());
                match next {
                    Some(url) if !page.done => {
                        if *shutdown.borrow() {
                            // Everything read is committed; the next start goes on from there.
                            return Ok(());
                        }
                        let more = self.client.query_more(&url, &opts).await;
                        out.calls += 1;
                        page = more?;
                    }
                    _ => break,
                }
            }
            if in_query < self.config.page_records || *shutdown.borrow() {
                break;
            }
            // A backlog beyond this page: large ones are read through Bulk API 2.0.
            if let (false, true, Some(at)) = (bulk_tried, cursor > start, after.clone()) {
                bulk_tried = true;
                match self
                    .read_backlog_in_bulk(&at, &mut cursor, seen, fence, shutdown, out)
                    .await?
                {
                    crate::poll_bulk::BulkStep::NotNeeded => {}
                    crate::poll_bulk::BulkStep::Read(end) => after = Some(end),
                    crate::poll_bulk::BulkStep::Interrupted => return Ok(()),
                }
            }
        }
        self.stats.poll_rounds.fetch_add(1, Relaxed);
        self.stats.polled(&self.channel, started);
        self.stats
            .poll_round_done(&self.channel, crate::apply::now_ms());
        Ok(())
    }

    /// Appends one page's new rows with the advanced cursor (one transaction); returns the
    /// page's last position. Rows that cannot be ordered (no Id or SystemModstamp) are kept as
    /// dead letters in the same transaction.
    async fn commit_page(
        &self,
        records: &[serde_json::Map<String, J>],
        cursor: &mut Option<Cursor>,
        seen: &mut BTreeSet<(i64, String)>,
        fence: Option<&sfsync_store::Fence>,
        out: &mut RoundOutcome,
    ) -> Result<Option<Cursor>> {
        let object = self.mapping.object();
        let seen_before = out.duplicates;
        let mut raws = Vec::new();
        let mut dead = Vec::new();
        let mut last = None;
        let mut keys = Vec::new();
        for r in records {
            out.rows += 1;
            match to_raw_change(object, r) {
                Ok(raw) => {
                    let at = Cursor::from_replay_id(&raw.replay_id).expect("built above");
                    let key = (at.modstamp_ms, at.id.clone());
                    last = Some(at);
                    if seen.contains(&key) {
                        out.duplicates += 1;
                        continue;
                    }
                    keys.push(key);
                    raws.push(raw);
                }
                Err(e) => dead.push(DeadLetter {
                    channel: self.channel.clone(),
                    replay_id: None,
                    schema_id: POLL_SCHEMA_ID.to_string(),
                    stage: "poll".into(),
                    error: e,
                    payload: serde_json::to_vec(r).unwrap_or_default(),
                    object: Some(object.to_string()),
                }),
            }
        }
        self.stats
            .poll_rows
            .fetch_add(records.len() as u64, Relaxed);
        let advanced = match (&last, cursor.as_ref()) {
            (Some(l), Some(c)) if l <= c => None,
            (Some(l), _) => Some(l.clone()),
            (None, _) => None,
        };
        if raws.is_empty() && dead.is_empty() && advanced.is_none() {
            self.stats.add_poll_page(
                &self.channel,
                records.len() as u64,
                0,
                out.duplicates - seen_before,
            );
            return Ok(last);
        }
        let checkpoint = advanced
            .clone()
            .or_else(|| cursor.clone())
            .unwrap_or(Cursor {
                modstamp_ms: 0,
                id: String::new(),
            })
            .to_replay_id();
        let t = std::time::Instant::now();
        let appended = crate::lease::append(
            &*self.store,
            &self.channel,
            &raws,
            &dead,
            &checkpoint,
            fence,
        )
        .await?;
        self.stats.time_stage(crate::stats::STAGE_INGEST_WRITE, t);
        if let Some(a) = advanced {
            *cursor = Some(a);
        }
        seen.extend(keys);
        out.appended += appended.appended;
        out.duplicates += appended.duplicates;
        self.stats.add_poll_page(
            &self.channel,
            records.len() as u64,
            appended.appended,
            out.duplicates - seen_before,
        );
        if let Some(c) = cursor.as_ref() {
            self.stats.poll_cursor(&self.channel, c.modstamp_ms);
        }
        self.stats.ingested.fetch_add(appended.appended, Relaxed);
        self.stats
            .add_channel_ingested(&self.channel, appended.appended);
        self.stats
            .duplicates
            .fetch_add(appended.duplicates, Relaxed);
        self.stats
            .dead_letters
            .fetch_add(dead.len() as u64, Relaxed);
        if appended.appended > 0 || !dead.is_empty() {
            self.appended.notify_one();
        }
        Ok(last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sfsync_salesforce::rest::ObjectDescribe;

    fn mapping() -> ObjectMapping {
        let describe: ObjectDescribe = serde_json::from_value(serde_json::json!({
            "name": "Account",
            "fields": [
                {"name": "Id", "type": "id"},
                {"name": "Name", "type": "string"},
                {"name": "SystemModstamp", "type": "datetime"},
                {"name": "IsDeleted", "type": "boolean"},
            ]
        }))
        .unwrap();
        ObjectMapping::build(&describe, &crate::model::ObjectSpec::new("Account")).unwrap()
    }

    fn row(id: &str, stamp: &str, deleted: bool) -> serde_json::Map<String, J> {
        serde_json::json!({
            "attributes": {"type": "Account"},
            "Id": id, "Name": "Acme", "SystemModstamp": stamp, "IsDeleted": deleted,
        })
        .as_object()
        .unwrap()
        .clone()
    }

    #[test]
    fn cursors_round_trip_and_order_by_stamp_then_id() {
        let a = Cursor {
            modstamp_ms: 1_767_323_045_000,
            id: "001000000000001AAA".into(),
        };
        assert_eq!(Cursor::from_replay_id(&a.to_replay_id()), Some(a.clone()));
        assert_eq!(
            Cursor::from_replay_id(&ReplayId::from_bytes(vec![0, 0, 1])),
            None
        );
        let b = Cursor {
            modstamp_ms: a.modstamp_ms,
            id: "001000000000002AAA".into(),
        };
        let c = Cursor {
            modstamp_ms: a.modstamp_ms + 1,
            id: String::new(),
        };
        assert!(a < b && b < c);
    }

    #[test]
    fn the_keyset_query_pages_by_stamp_and_id() {
        let m = mapping();
        let q = page_soql(&m, None, 300);
        assert!(
            q.ends_with(" ORDER BY SystemModstamp ASC, Id ASC LIMIT 300"),
            "{q}"
        );
        assert!(!q.contains("WHERE"), "{q}");
        let q = page_soql(
            &m,
            Some(&Cursor {
                modstamp_ms: 1_767_323_045_000,
                id: "001000000000001AAA".into(),
            }),
            300,
        );
        assert!(
            q.contains(
                " WHERE (SystemModstamp > 2026-01-02T03:04:05.000Z OR (SystemModstamp = \
                 2026-01-02T03:04:05.000Z AND Id > '001000000000001AAA')) ORDER BY"
            ),
            "{q}"
        );
        assert!(q.contains("IsDeleted"), "{q}");
    }

    #[test]
    fn rows_become_keyed_versioned_changes() {
        let m = mapping();
        let raw = to_raw_change(
            "Account",
            &row("001000000000001AAA", "2026-01-02T03:04:05.000Z", false),
        )
        .unwrap();
        assert_eq!(
            raw.event_key.as_str(),
            "poll-1767323045000/0/001000000000001AAA"
        );
        assert_eq!(raw.version.commit_timestamp, 1_767_323_045_000);
        assert_eq!(raw.change_type, ChangeType::Update);
        let Normalized::Records(rs) = normalize(&m, &raw).unwrap() else {
            panic!("not records")
        };
        assert_eq!(rs[0].source, ChangeSource::Poll);
        assert_eq!(rs[0].change_type, CHANGE_TYPE);
        assert!(!rs[0].deleted);
        let raw = to_raw_change(
            "Account",
            &row("001000000000001AAA", "2026-01-02T03:04:06.000Z", true),
        )
        .unwrap();
        assert_eq!(raw.change_type, ChangeType::Delete);
        let Normalized::Records(rs) = normalize(&m, &raw).unwrap() else {
            panic!("not records")
        };
        assert!(rs[0].deleted);
        assert_eq!(rs[0].change_type, "DELETE");
        let mut bad = row("001000000000001AAA", "x", false);
        assert!(to_raw_change("Account", &bad)
            .unwrap_err()
            .contains("SystemModstamp"));
        bad.remove("Id");
        assert!(to_raw_change("Account", &bad).unwrap_err().contains("Id"));
    }
}
