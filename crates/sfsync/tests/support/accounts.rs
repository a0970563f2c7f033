//! Account changes made straight in the emulator's org, and checks of a SQLite warehouse's
//! Account tables against it — shared by the polling and CDC-fallback end-to-end tests.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::Value as J;
use sfsync_emulator::RunningEmulator;
use sfsync_org::{ApiKind, CallContext, DmlOp};
use sfsync_pipeline::ObjectMapping;
use sfsync_salesforce::SalesforceClient;
use sfsync_store::{SqliteChangeLog, Warehouse};

/// The org admin calling over REST (no client id: not sfsync's own writes).
pub fn ctx(emu: &RunningEmulator) -> CallContext {
    CallContext {
        user_id: emu.org().admin_user_id(),
        api: ApiKind::Rest,
        api_version: "66.0".into(),
        client: None,
    }
}

/// Runs `ops` as one transaction (stamped `stamped_ms` when given: a late commit, its
/// SystemModstamp before its commit); the ids.
pub fn exec(emu: &RunningEmulator, ops: Vec<DmlOp>, stamped_ms: Option<i64>) -> Vec<String> {
    let org = emu.org();
    let results = match stamped_ms {
        Some(ts) => org.execute_stamped(&ctx(emu), ops, true, ts),
        None => org.execute(&ctx(emu), ops, true),
    };
    results
        .into_iter()
        .map(|r| r.expect("DML succeeds").id().to_string())
        .collect()
}

/// `n` new Accounts named `<prefix> <i>` with `fields(i)` besides the name.
pub fn inserts_with(prefix: &str, n: usize, fields: impl Fn(usize) -> J) -> Vec<DmlOp> {
    (0..n)
        .map(|i| {
            let mut f = fields(i).as_object().cloned().unwrap_or_default();
            f.insert("Name".into(), J::String(format!("{prefix} {i}")));
            DmlOp::Insert {
                object: "Account".into(),
                fields: f,
            }
        })
        .collect()
}

/// `n` new Accounts named `<prefix> <i>` with AnnualRevenue `i`.
pub fn inserts(prefix: &str, n: usize) -> Vec<DmlOp> {
    inserts_with(
        prefix,
        n,
        |i| serde_json::json!({ "AnnualRevenue": i as f64 }),
    )
}

/// The same `fields` set on each of `ids`.
pub fn updates(ids: &[String], fields: J) -> Vec<DmlOp> {
    ids.iter()
        .map(|id| DmlOp::Update {
            object: "Account".into(),
            id: id.clone(),
            fields: fields.as_object().unwrap().clone(),
        })
        .collect()
}

/// The curated Account table against the org: live rows column by column, and `deleted`
/// flagged deleted in the warehouse.
pub async fn diff(
    client: &SalesforceClient,
    mapping: &ObjectMapping,
    store: &SqliteChangeLog,
    deleted: &BTreeSet<String>,
) -> Vec<String> {
    let mut p = super::live_diff(client, mapping, store).await;
    let rows: BTreeMap<String, bool> = store
        .read_current("Account")
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.id.clone(), r.deleted))
        .collect();
    for id in deleted {
        if rows.get(id) != Some(&true) {
            p.push(format!(
                "Account {id}: deleted in the org, {:?} in the warehouse",
                rows.get(id)
            ));
        }
    }
    p
}

/// Waits (up to `within`) until [`diff`] is empty.
pub async fn wait_equal(
    client: &SalesforceClient,
    mapping: &ObjectMapping,
    store: &SqliteChangeLog,
    deleted: &BTreeSet<String>,
    within: Duration,
    what: &str,
) {
    super::wait_for(what, within, || async {
        diff(client, mapping, store, deleted).await
    })
    .await;
}

/// Per Account: its number of history versions. Panics on a version that repeats its
/// predecessor's values (but after a delete: the undelete reopens the same values),
/// overlapping windows, or more than one current version.
pub async fn history(store: &SqliteChangeLog) -> BTreeMap<String, usize> {
    let mut by_id: BTreeMap<String, Vec<sfsync_store::HistoryRow>> = BTreeMap::new();
    for h in store.read_history("Account").await.unwrap() {
        by_id.entry(h.id.clone()).or_default().push(h);
    }
    let mut out = BTreeMap::new();
    for (id, mut hs) in by_id {
        hs.sort_by_key(|h| h.version);
        assert!(
            hs.iter().filter(|h| h.is_current).count() <= 1,
            "{id}: several current versions"
        );
        for w in hs.windows(2) {
            if w[0].end_change_type.as_deref() == Some("DELETE") {
                continue;
            }
            assert_ne!(
                w[0].values, w[1].values,
                "{id}: version {} repeats version {}",
                w[1].version, w[0].version
            );
            let to = w[0].valid_to_ms.expect("an older version is closed");
            assert!(to <= w[1].valid_from_ms, "{id}: overlapping versions");
        }
        out.insert(id, hs.len());
    }
    out
}
