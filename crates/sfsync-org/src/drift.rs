//! Drift: changes made to the org *behind the CDC stream's back*, for reconciliation tests. A
//! drift call changes records the way DML would (same validation, same system fields, a
//! monotonic timestamp) but is not a transaction: no listener sees it, so no change event is
//! published, and it consumes no commit number. It is journalled like DML, so a persisted org
//! reproduces it on restart; it is all or nothing (a bad id or value changes nothing).
//!
//! The journal entry ([`DriftEntry`]) is built once, after validation, and applied by the same
//! function ([`apply`]) live and on replay, so a restart ends in exactly the live state.

use serde::{Deserialize, Serialize};
use sfsync_core::SfId;

use crate::store::{FKind, State};
use crate::value::Val;
use crate::Fields;

/// What a drift call does to each of its records.
#[derive(Debug, Clone, PartialEq)]
pub enum Drift {
    /// Sets field values (REST JSON; `null` clears) validated and coerced exactly like a REST
    /// update, and bumps LastModifiedDate, LastModifiedById (to the caller) and SystemModstamp.
    /// Empty fields only bump the system fields. Records in the recycle bin are refused.
    SilentUpdate(Fields),
    /// Moves live records to the recycle bin (IsDeleted = true, visible to queryAll) and bumps
    /// SystemModstamp. Records already in the recycle bin are refused.
    SilentDelete,
    /// Removes live or recycle-bin records completely (as a hard delete or an emptied recycle
    /// bin would): gone from query, queryAll and retrieve.
    Purge,
}

impl Drift {
    /// The action's name in the admin API and the journal.
    pub fn action(&self) -> DriftAction {
        match self {
            Drift::SilentUpdate(_) => DriftAction::SilentUpdate,
            Drift::SilentDelete => DriftAction::SilentDelete,
            Drift::Purge => DriftAction::Purge,
        }
    }
}

/// A drift call's action, as named in the admin API (`silent_update`, `silent_delete`, `purge`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DriftAction {
    SilentUpdate,
    SilentDelete,
    Purge,
}

impl DriftAction {
    pub fn as_str(self) -> &'static str {
        match self {
            DriftAction::SilentUpdate => "silent_update",
            DriftAction::SilentDelete => "silent_delete",
            DriftAction::Purge => "purge",
        }
    }
}

/// Records changed by drift since the org was created (kept across restarts), shown by
/// [`crate::Org::stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct DriftCounts {
    pub silent_updated: u64,
    pub silent_deleted: u64,
    pub purged: u64,
}

/// One validated drift call: the journal entry, and the recipe [`apply`] follows.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct DriftEntry {
    pub action: DriftAction,
    /// Canonical object name.
    pub object: String,
    /// Distinct ids, in request order; every one names a record of `object`.
    pub ids: Vec<SfId>,
    /// `silent_update`: the coerced new values, in stored JSON form, keyed by canonical name.
    #[serde(default)]
    pub values: Fields,
    /// The drift time (epoch ms): SystemModstamp (and LastModifiedDate for an update).
    pub timestamp: i64,
    /// LastModifiedById of a `silent_update`.
    pub user: SfId,
}

/// Applies a validated entry to the state (live after validation, and on journal replay).
/// Fails only when the state does not hold the records the entry names (a journal that does not
/// belong to this state); nothing is changed then.
pub(crate) fn apply(st: &mut State, e: &DriftEntry) -> Result<(), String> {
    let compiled = st.compiled.clone();
    let c = compiled
        .object(&e.object)
        .ok_or_else(|| format!("sObject type '{}' is not supported.", e.object))?;
    let mut values: Vec<(usize, Val)> = Vec::with_capacity(e.values.len());
    for (k, v) in &e.values {
        let i = c
            .field(k)
            .filter(|&i| matches!(c.kinds[i], FKind::Stored))
            .ok_or_else(|| format!("{}.{k} is not a stored field", c.name()))?;
        let val = Val::from_stored_json(c.fd(i).field_type, v)
            .ok_or_else(|| format!("{}.{k}: cannot read value {v}", c.name()))?;
        values.push((i, val));
    }
    let store = &st.stores[c.index];
    let mut slots = Vec::with_capacity(e.ids.len());
    for id in &e.ids {
        let (slot, rec) = store
            .get(id)
            .ok_or_else(|| format!("{} record {id} not found", c.name()))?;
        if rec.deleted && e.action != DriftAction::Purge {
            return Err(format!("{} record {id} is in the recycle bin", c.name()));
        }
        slots.push(slot);
    }
    let ts = Val::DateTime(e.timestamp);
    for slot in slots {
        let store = &mut st.stores[c.index];
        let new = match e.action {
            DriftAction::Purge => None,
            DriftAction::SilentDelete => store.slots[slot as usize].clone().map(|mut r| {
                r.deleted = true;
                r.set(c.sysmod_f, ts.clone());
                r
            }),
            DriftAction::SilentUpdate => store.slots[slot as usize].clone().map(|mut r| {
                for (i, v) in &values {
                    r.set(*i, v.clone());
                }
                r.set(c.lmd_f, ts.clone());
                r.set(c.lmb_f, Val::Id(e.user));
                r.set(c.sysmod_f, ts.clone());
                r
            }),
        };
        store.replace(slot, new);
    }
    let n = e.ids.len() as u64;
    match e.action {
        DriftAction::SilentUpdate => st.drift.silent_updated += n,
        DriftAction::SilentDelete => st.drift.silent_deleted += n,
        DriftAction::Purge => st.drift.purged += n,
    }
    st.last_ts = st.last_ts.max(e.timestamp);
    Ok(())
}
