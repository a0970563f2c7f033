//! Leases with fencing, and compare-and-set log positions: what lets several `sfsync` processes
//! share one warehouse (issue 10's roles).
//!
//! A **lease** names a duty only one process may carry out at a time (the ingest subscriber of
//! a channel). It is held by a holder until `expires_at_ms`, renewed before then, and taken over
//! by another holder only once it has expired; every take-over increments its **epoch**. The
//! epoch is the fence: a write made under a lease ([`Fence`]) checks, inside its own
//! transaction, that the lease is still held by that holder at that epoch and has not expired —
//! so a process that was paused past its lease (GC, SIGSTOP, a network partition) and wakes up
//! believing it still leads cannot write anything. Expiry is judged by the database's clock on
//! Postgres (one clock for every machine), by the local clock on SQLite (one machine).
//!
//! A **log position** ([`LogPosition`]) is an apply offset moved by compare-and-set: the
//! curated batch commits only when the stored offset is still the one the worker started from.
//! Two apply workers that briefly both believe they own a Kafka partition (a rebalance while one
//! is paused) can therefore never both apply it: the second commit fails with
//! [`crate::StoreError::PositionMoved`] and nothing of its batch is written.

use async_trait::async_trait;
use serde::Serialize;

use crate::Result;

/// A lease as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Lease {
    pub name: String,
    pub holder: String,
    /// Incremented at every take-over (1 for the first holder).
    pub epoch: i64,
    pub acquired_at_ms: i64,
    pub renewed_at_ms: i64,
    pub expires_at_ms: i64,
}

impl Lease {
    /// The fence writes under this lease carry.
    pub fn fence(&self) -> Fence {
        Fence {
            lease: self.name.clone(),
            holder: self.holder.clone(),
            epoch: self.epoch,
        }
    }
}

/// Proof of holding a lease, checked inside the transaction of a fenced write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    pub lease: String,
    pub holder: String,
    pub epoch: i64,
}

/// An apply offset moved by compare-and-set with a curated batch (see the module doc).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogPosition {
    /// The consumer name (e.g. `kafka:sfsync.raw:3` for partition 3 of a topic).
    pub consumer: String,
    /// The offset the worker found stored when it started on the batch (`None`: none stored).
    pub expected: Option<u64>,
    /// The offset the batch completes.
    pub offset: u64,
}

/// Leases and fenced writes (SQLite and Postgres).
#[async_trait]
pub trait Leases: Send + Sync {
    /// Takes `name` for `holder` for `ttl_ms`: when nobody holds it, when it expired (the epoch
    /// moves on), or when `holder` already holds it (renewed, same epoch). `None` when another
    /// holder's lease is still running.
    async fn acquire_lease(&self, name: &str, holder: &str, ttl_ms: i64) -> Result<Option<Lease>>;

    /// Extends a lease this holder still holds at this epoch and has not let expire; `None` when
    /// it was lost (expired, taken over or released) — the holder must stop its duty at once.
    async fn renew_lease(&self, fence: &Fence, ttl_ms: i64) -> Result<Option<Lease>>;

    /// Gives the lease up (a graceful stop lets a successor take over at once). Releasing a
    /// lease no longer held is a no-op.
    async fn release_lease(&self, fence: &Fence) -> Result<()>;

    /// Every lease, by name.
    async fn leases(&self) -> Result<Vec<Lease>>;

    /// [`crate::Warehouse::append_with_dead_letters`] made only while `fence` holds, checked in
    /// the same transaction: [`crate::StoreError::Fenced`] when it does not, and nothing is
    /// written. With no changes it only moves the checkpoint (and stores the dead letters): an
    /// ingest whose changes went to an external log (Kafka).
    async fn append_fenced(
        &self,
        channel: &str,
        changes: &[crate::RawChange],
        dead_letters: &[crate::DeadLetter],
        checkpoint: &sfsync_core::ReplayId,
        fence: &Fence,
    ) -> Result<crate::AppendOutcome>;
}
