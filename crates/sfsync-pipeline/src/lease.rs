//! Keeping a lease ([`sfsync_store::Leases`]): a task acquires it (waiting while another holder
//! has it), renews it at a third of its time to live, and publishes the fence the duty's
//! writes must carry — `None` while the lease is not held. A renewal that fails, or that has not
//! succeeded for most of the time to live (the store unreachable), withdraws the fence at once:
//! the duty stops before its lease could have expired. The store checks the fence inside every
//! fenced write anyway, so a process paused past its lease writes nothing when it wakes.

use std::sync::Arc;
use std::time::Duration;

use sfsync_store::{Fence, Warehouse};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::error::chain;

/// A lease kept by a background task.
pub struct LeaseKeeper {
    pub name: String,
    fence: watch::Receiver<Option<Fence>>,
    task: JoinHandle<()>,
}

impl LeaseKeeper {
    /// Starts keeping `name` for `holder`; stops (and releases it) when `shutdown` turns true.
    pub fn spawn(
        store: Arc<dyn Warehouse>,
        name: String,
        holder: String,
        ttl: Duration,
        mut shutdown: watch::Receiver<bool>,
    ) -> LeaseKeeper {
        let (tx, rx) = watch::channel(None::<Fence>);
        let ttl_ms = ttl.as_millis() as i64;
        let every = (ttl / 3).max(Duration::from_millis(50));
        let n = name.clone();
        let task = tokio::spawn(async move {
            let mut held_until: Option<Instant> = None;
            loop {
                // Woken late (a pause): give the duty up before asking the store anything.
                if held_until.is_some_and(|t| t - ttl / 3 <= Instant::now()) {
                    tracing::warn!(lease = %n, "Lease not renewed in time; stopping its duty.");
                    tx.send_replace(None);
                    held_until = None;
                }
                let current = tx.borrow().clone();
                let outcome = match &current {
                    None => store.acquire_lease(&n, &holder, ttl_ms).await,
                    Some(f) => store.renew_lease(f, ttl_ms).await,
                };
                match outcome {
                    Ok(Some(lease)) => {
                        if current.is_none() {
                            tracing::info!(lease = %n, holder = %holder, epoch = lease.epoch, "Lease acquired.");
                        }
                        held_until = Some(Instant::now() + ttl);
                        tx.send_replace(Some(lease.fence()));
                    }
                    Ok(None) => {
                        if current.is_some() {
                            tracing::warn!(lease = %n, holder = %holder, "Lease lost (expired or taken over); stopping its duty.");
                            tx.send_replace(None);
                        }
                        held_until = None;
                    }
                    Err(e) => {
                        tracing::warn!(lease = %n, error = %chain(&e), "Lease renewal failed.");
                    }
                }
                // Not renewed for two thirds of its life: give the duty up before it expires.
                if held_until.is_some_and(|t| t - ttl / 3 <= Instant::now()) {
                    tracing::warn!(lease = %n, "Lease not renewed in time; stopping its duty.");
                    tx.send_replace(None);
                    held_until = None;
                }
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = shutdown.changed() => {}
                }
                if *shutdown.borrow() {
                    if let Some(f) = tx.send_replace(None) {
                        let _ = store.release_lease(&f).await;
                    }
                    return;
                }
            }
        });
        LeaseKeeper {
            name,
            fence: rx,
            task,
        }
    }

    /// The fence while the lease is held.
    pub fn watch(&self) -> watch::Receiver<Option<Fence>> {
        self.fence.clone()
    }

    /// Waits for the keeper to release the lease after shutdown.
    pub async fn join(self) {
        let _ = self.task.await;
    }
}

/// Appends `changes` and `dead` letters with `channel`'s checkpoint in one transaction, fenced by
/// the lease when one is held (a lost lease refuses the write), plain otherwise.
pub async fn append(
    store: &dyn sfsync_store::Warehouse,
    channel: &str,
    changes: &[sfsync_store::RawChange],
    dead: &[sfsync_store::DeadLetter],
    checkpoint: &sfsync_core::ReplayId,
    fence: Option<&Fence>,
) -> crate::Result<sfsync_store::AppendOutcome> {
    Ok(match fence {
        Some(f) => {
            store
                .append_fenced(channel, changes, dead, checkpoint, f)
                .await?
        }
        None => {
            store
                .append_with_dead_letters(channel, changes, dead, checkpoint)
                .await?
        }
    })
}
