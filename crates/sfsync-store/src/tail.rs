//! The log tail in memory: changes this process appended, kept (plain payloads, bounded by
//! bytes) so the apply stage reads them back without a query, a decompression or a decryption.
//!
//! Correctness does not depend on it. The cache only claims the offset range `[lo, hi]` that its
//! own appends covered without another writer in between (the appender checks the log's
//! high-water mark inside its write transaction and resets the cache when someone else wrote);
//! anything outside that range, or evicted, is read from the database as before. Code that
//! deletes or rewrites `raw_changes` (retention, compaction) must call [`TailCache::clear`] or
//! go through `SqliteChangeLog::with_transaction`, which does.

use std::collections::VecDeque;

use parking_lot::Mutex;

use crate::{LogOffset, LoggedChange};

/// Bytes of payload the tail keeps by default (oldest evicted first): the ingest lag limit
/// (two apply batches, see `sfsync-pipeline`'s gate) of 3–8 KB changes is mostly within it; a
/// miss only costs a read from the database. Larger tails bought no throughput and counted
/// against the pipeline's RSS (measured: 8 MiB vs 24 MiB, same events/s).
pub(crate) const DEFAULT_TAIL_BYTES: usize = 8 << 20;

/// Per-entry bookkeeping counted on top of the payload.
const ENTRY_OVERHEAD: usize = 256;

pub(crate) struct TailCache {
    inner: Mutex<Inner>,
    max_bytes: usize,
}

#[derive(Default)]
struct Inner {
    /// Every logged change with `lo <= offset <= hi` is in `entries` (offsets may have holes);
    /// `None` until the first append of this process.
    range: Option<(LogOffset, LogOffset)>,
    entries: VecDeque<LoggedChange>,
    bytes: usize,
}

impl TailCache {
    pub(crate) fn new(max_bytes: usize) -> TailCache {
        TailCache {
            inner: Mutex::new(Inner::default()),
            max_bytes,
        }
    }

    /// Records a committed append. `before` is the log's high-water mark when the append's
    /// transaction began (nothing above it existed), `after` the mark at commit, `appended` the
    /// changes it wrote, in offset order. Must be called in commit order (under the writer lock).
    pub(crate) fn publish(&self, before: LogOffset, after: LogOffset, appended: Vec<LoggedChange>) {
        let mut g = self.inner.lock();
        let contiguous = matches!(g.range, Some((_, hi)) if hi == before);
        if !contiguous {
            // First append, or another writer appended since ours: start over from here.
            g.entries.clear();
            g.bytes = 0;
            g.range = Some((before + 1, before));
        }
        for mut c in appended {
            // Its own allocation: a payload received over gRPC is a slice of a larger frame
            // buffer, which the slice would otherwise keep alive.
            c.change.payload = bytes::Bytes::copy_from_slice(&c.change.payload);
            g.bytes += c.change.payload.len() + ENTRY_OVERHEAD;
            g.entries.push_back(c);
        }
        if let Some((lo, _)) = g.range {
            g.range = Some((lo, after.max(before)));
        }
        while g.bytes > self.max_bytes {
            let Some(old) = g.entries.pop_front() else {
                break;
            };
            g.bytes -= old.change.payload.len() + ENTRY_OVERHEAD;
            if let Some((_, hi)) = g.range {
                g.range = Some((old.offset + 1, hi));
            }
        }
    }

    /// Forgets everything (another writer may have changed what the log holds).
    pub(crate) fn clear(&self) {
        let mut g = self.inner.lock();
        *g = Inner::default();
    }

    /// Up to `limit` changes with offset `>= from` when the cache covers `from`, with the
    /// offset after the last one it could vouch for (`hi + 1`): the caller reads anything
    /// beyond from the database. `None` when `from` is not covered.
    pub(crate) fn read(
        &self,
        from: LogOffset,
        limit: usize,
    ) -> Option<(Vec<LoggedChange>, LogOffset)> {
        let g = self.inner.lock();
        let (lo, hi) = g.range?;
        if from < lo || from > hi {
            return None;
        }
        let start = g.entries.partition_point(|c| c.offset < from);
        let out: Vec<LoggedChange> = g.entries.iter().skip(start).take(limit).cloned().collect();
        let next = match out.last() {
            Some(last) if out.len() == limit => last.offset + 1,
            _ => hi + 1,
        };
        Some((out, next))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RawChange;
    use sfsync_core::{ChangeType, EventKey, RecordVersion, ReplayId};

    fn logged(offset: LogOffset, size: usize) -> LoggedChange {
        LoggedChange {
            offset,
            channel: "/data/ChangeEvents".into(),
            change: RawChange {
                event_key: EventKey::new("tx", offset as i32, "001"),
                replay_id: ReplayId::from_bytes(vec![offset as u8]),
                schema_id: "s".into(),
                entity: "Account".into(),
                change_type: ChangeType::Update,
                version: RecordVersion::default(),
                payload: vec![0u8; size].into(),
            },
        }
    }

    fn offsets(v: &[LoggedChange]) -> Vec<LogOffset> {
        v.iter().map(|c| c.offset).collect()
    }

    #[test]
    fn serves_only_the_range_its_own_appends_covered() {
        let t = TailCache::new(1 << 20);
        assert!(t.read(1, 10).is_none());
        // Offsets 1, 2 and 4 (3 was a duplicate's hole).
        t.publish(0, 4, vec![logged(1, 10), logged(2, 10), logged(4, 10)]);
        let (got, next) = t.read(1, 10).unwrap();
        assert_eq!((offsets(&got), next), (vec![1, 2, 4], 5));
        let (got, next) = t.read(2, 1).unwrap();
        assert_eq!((offsets(&got), next), (vec![2], 3));
        let (got, next) = t.read(3, 10).unwrap();
        assert_eq!((offsets(&got), next), (vec![4], 5));
        // Beyond what it covers: the database answers.
        assert!(t.read(5, 10).is_none());
        // Contiguous append extends the range.
        t.publish(4, 5, vec![logged(5, 10)]);
        assert_eq!(offsets(&t.read(1, 10).unwrap().0), vec![1, 2, 4, 5]);
        // Another writer appended 6..=8: the cache restarts after them.
        t.publish(8, 9, vec![logged(9, 10)]);
        assert!(t.read(1, 10).is_none());
        assert!(t.read(8, 10).is_none());
        assert_eq!(offsets(&t.read(9, 10).unwrap().0), vec![9]);
        t.clear();
        assert!(t.read(9, 10).is_none());
    }

    #[test]
    fn evicts_oldest_first_and_stops_claiming_them() {
        let t = TailCache::new(3 * (100 + ENTRY_OVERHEAD));
        t.publish(0, 5, (1..=5).map(|o| logged(o, 100)).collect());
        assert!(t.read(2, 10).is_none());
        let (got, next) = t.read(3, 10).unwrap();
        assert_eq!((offsets(&got), next), (vec![3, 4, 5], 6));
    }
}
