//! Read views for the dashboard: flows with their health and throughput, the freshness
//! contract (the warehouse's `sync_status`), the API budget with its burn-rate history and
//! forecast, and the integration map.
//!
//! Guarantees: every figure is read from the pipeline's counters, the store or the budget
//! governor when the request is answered; throughput and budget history come from a sampler
//! that records the cumulative counters every [`SAMPLE_EVERY`] (so a point is a difference of
//! two real readings, never an estimate) and keeps the last [`HISTORY_POINTS`] samples.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use serde::Deserialize;
use serde_json::{json, Value as J};
use sfsync_salesforce::BudgetStatus;
use sfsync_store::{
    FreshnessStatus, SyncJobFilter, SyncJobKind, SyncJobStatus, SyncStatus, WriteState,
};

use super::auth::Caller;
use super::error::ApiError;
use super::routes::{now_ms, ts};
use super::ApiState;
use crate::map_cmd::Flow;

/// How often the sampler reads the counters.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(10);
/// Samples kept (an hour at 10 s).
pub const HISTORY_POINTS: usize = 360;
/// Throughput points a flow returns (the last ten minutes at 10 s).
const THROUGHPUT_POINTS: usize = 60;

/// Where the API reads the budget governor's state (the Salesforce client's governor).
pub type BudgetSource = Arc<dyn Fn() -> BudgetStatus + Send + Sync>;

/// One reading of the cumulative counters.
#[derive(Debug, Clone, Default)]
struct Sample {
    at_ms: i64,
    /// Record changes committed per object (inbound).
    changes: BTreeMap<String, u64>,
    /// Writes applied per object (outbound).
    writes_applied: BTreeMap<String, u64>,
    our_used: Option<u64>,
    org_used: Option<u64>,
}

/// The sampled history.
#[derive(Debug, Default, Clone)]
pub struct History {
    samples: VecDeque<Sample>,
}

impl History {
    fn push(&mut self, s: Sample) {
        if self.samples.len() == HISTORY_POINTS {
            self.samples.pop_front();
        }
        self.samples.push_back(s);
    }

    /// Per-interval differences of one counter, oldest first, at most `n`.
    fn rates(&self, n: usize, pick: impl Fn(&Sample) -> u64) -> Vec<u64> {
        let v: Vec<u64> = self.samples.iter().map(pick).collect();
        let diffs: Vec<u64> = v.windows(2).map(|w| w[1].saturating_sub(w[0])).collect();
        diffs[diffs.len().saturating_sub(n)..].to_vec()
    }
}

/// Reads the counters once.
fn sample(s: &ApiState) -> Sample {
    let budget = s.budget.as_ref().map(|b| b());
    Sample {
        at_ms: now_ms(),
        changes: s
            .stats
            .objects()
            .into_iter()
            .map(|(k, v)| (k, v.changes))
            .collect(),
        writes_applied: s
            .stats
            .writeback
            .objects()
            .into_iter()
            .map(|(k, v)| (k, v.applied))
            .collect(),
        our_used: budget.as_ref().map(|b| b.our_used),
        org_used: budget.and_then(|b| b.org_used),
    }
}

/// Samples every [`SAMPLE_EVERY`] until the task is aborted (with the API).
pub async fn sampler(state: Arc<ApiState>) {
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    loop {
        tick.tick().await;
        let s = sample(&state);
        state.history.lock().push(s);
    }
}

fn secs(ms: i64) -> f64 {
    ms.max(0) as f64 / 1000.0
}

/// A stable identifier of a flow: `inbound-CDC-stream-Case-salesforce-warehouse`.
pub fn flow_id(f: &Flow) -> String {
    format!(
        "{}-{}-{}-{}-{}",
        f.direction, f.pattern, f.object, f.source, f.target
    )
    .chars()
    .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
    .collect()
}

/// The source system a map node stands for (`None` for Salesforce, the warehouse and the
/// "any system" node of shared fields).
fn system_of<'a>(map: &'a crate::map_cmd::IntegrationMap, node: &str) -> Option<&'a str> {
    map.nodes
        .iter()
        .find(|n| n.id == node)
        .and_then(|n| n.system.as_deref())
}

/// Health from a lag against an SLA: green up to half, amber up to the SLA, red beyond.
fn by_lag(lag: f64, sla: u64, what: &str) -> (&'static str, String) {
    let sla_f = sla as f64;
    if lag > sla_f {
        (
            "red",
            format!("{what} {lag:.0} s is over the SLA of {sla} s"),
        )
    } else if lag > sla_f / 2.0 {
        (
            "amber",
            format!("{what} {lag:.0} s is over half the SLA of {sla} s"),
        )
    } else {
        (
            "green",
            format!("{what} {lag:.1} s within the SLA of {sla} s"),
        )
    }
}

/// The objects this process syncs (and writes a `sync_status` row for).
fn synced_objects(s: &ApiState) -> Vec<String> {
    s.objects
        .iter()
        .filter(|o| o.channel.is_some())
        .map(|o| o.name.clone())
        .collect()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyncStatusQuery {
    object: Option<String>,
}

/// `GET /api/v1/sync-status[?object=NAME]`: the warehouse's `sync_status` rows and the overall
/// status (see [`crate::sync_status_cmd::report`]).
pub async fn sync_status(
    State(s): State<Arc<ApiState>>,
    caller: Caller,
    q: Result<Query<SyncStatusQuery>, QueryRejection>,
) -> super::routes::ApiResult {
    caller.require_viewer()?;
    let q = super::routes::query(q)?;
    let synced = synced_objects(&s);
    let expected = match &q.object {
        None => synced,
        Some(o) if synced.contains(o) => vec![o.clone()],
        Some(o) => {
            return Err(ApiError::not_found(format!(
                "object {o} is not synced by this process (synced: {})",
                synced.join(", ")
            )))
        }
    };
    let rows = read_sync_status(&s, q.object.as_deref()).await?;
    let (_, body) = crate::sync_status_cmd::report(&rows, &expected);
    super::routes::ok(body)
}

async fn read_sync_status(s: &ApiState, object: Option<&str>) -> Result<Vec<SyncStatus>, ApiError> {
    s.store
        .sync_status(object)
        .await
        .map_err(|e| ApiError::internal("reading the warehouse's sync_status view", e))
}

/// Health of an inbound CDC flow from its `sync_status` row: partial is amber, delayed red,
/// current by its lag against the SLA (an idle object is current: its lag counts from
/// `current_as_of`, not from its last change).
fn inbound_health(row: &SyncStatus, sla: u64) -> (&'static str, String) {
    match (row.status, row.lag_seconds) {
        (FreshnessStatus::Partial, _) => ("amber", format!("partial: {}", row.status_reason)),
        (FreshnessStatus::Delayed, _) | (_, None) => {
            ("red", format!("delayed: {}", row.status_reason))
        }
        (FreshnessStatus::Current, Some(lag)) => by_lag(lag, sla, "lag"),
    }
}

/// `GET /api/v1/flows`: every flow of the integration map with its live figures and health.
pub async fn flows(State(s): State<Arc<ApiState>>, caller: Caller) -> super::routes::ApiResult {
    caller.require_viewer()?;
    let counts = super::routes::ops_counts(&s).await?;
    let freshness = read_sync_status(&s, None).await?;
    let now = now_ms();
    let st = &s.stats;
    let backlog = st
        .ingested
        .load(std::sync::atomic::Ordering::Relaxed)
        .saturating_sub(st.processed.load(std::sync::atomic::Ordering::Relaxed));
    let last_applied = st
        .last_applied_at_ms
        .load(std::sync::atomic::Ordering::Relaxed);
    let per_object = st.objects();
    // A copy: the lock is never held across an await.
    let history = s.history.lock().clone();
    // The publish queue's counts, read once for every outbound platform-event flow.
    let mut publish_queue = None;
    let mut out = Vec::new();
    for f in &s.map.flows {
        let mut flow = serde_json::to_value(f).unwrap_or(J::Null);
        let o = flow
            .as_object_mut()
            .expect("a flow serialises to an object");
        o.remove("sla_secs");
        o.insert("id".into(), json!(flow_id(f)));
        o.insert("sla_seconds".into(), json!(f.sla_secs));
        let (lag, freshness, last_commit, points, health, counts_json) =
            match (f.direction, f.pattern) {
                // Every way a record's changes land in its curated table: freshness from the
                // object's sync_status row.
                ("inbound", "CDC stream" | "polling" | "outbound message") => {
                    let obj = per_object
                        .iter()
                        .find(|(k, _)| *k == f.object)
                        .map(|(_, v)| *v)
                        .unwrap_or_default();
                    let row = freshness.iter().find(|r| r.state.object == f.object);
                    let last = match row.and_then(|r| r.state.last_commit_ms) {
                        Some(ms) => ms.max(obj.last_commit_ms),
                        None => obj.last_commit_ms,
                    };
                    let fresh = (last_applied > 0).then(|| secs(now - last_applied));
                    let points = history.rates(THROUGHPUT_POINTS, |x| {
                        x.changes.get(&f.object).copied().unwrap_or(0)
                    });
                    // Lag from the freshness contract (now − current_as_of); without a row yet,
                    // from the object's last applied change.
                    let (lag, health) = match row {
                        Some(r) => (r.lag_seconds, inbound_health(r, f.sla_secs)),
                        None => {
                            let lag = (last > 0).then(|| secs(now - last));
                            let health = match lag {
                                None => (
                                    "grey",
                                    "no change of this object applied since start".into(),
                                ),
                                Some(l) if backlog == 0 => (
                                    "green",
                                    format!(
                                        "caught up with the stream; the last change was \
                                         committed {l:.0} s ago"
                                    ),
                                ),
                                Some(l) => by_lag(l, f.sla_secs, "lag"),
                            };
                            (lag, health)
                        }
                    };
                    (
                        lag,
                        fresh,
                        (last > 0).then(|| ts(last)),
                        Some(points),
                        health,
                        json!({ "changes_committed": obj.changes, "backlog_events": backlog }),
                    )
                }
                (direction, "platform event") => {
                    platform_event_flow(&s, direction, &f.object, &mut publish_queue).await?
                }
                ("outbound", _) => {
                    // The writes of this flow's system; the "any system" flow (shared fields)
                    // has the writes of every system no other flow of the object names.
                    let named: Vec<&str> = s
                        .map
                        .flows
                        .iter()
                        .filter(|g| g.direction == "outbound" && g.object == f.object)
                        .filter_map(|g| system_of(&s.map, &g.source))
                        .collect();
                    let mine = |source: &str| match system_of(&s.map, &f.source) {
                        Some(system) => source == system,
                        None => !named.contains(&source),
                    };
                    let by_state = |state: WriteState| -> u64 {
                        counts
                            .writes_by_object
                            .iter()
                            .filter(|(o, src, st, _)| *o == f.object && mine(src) && *st == state)
                            .map(|(_, _, _, n)| n)
                            .sum()
                    };
                    let oldest = counts
                        .oldest_open_write_ms
                        .iter()
                        .filter(|(o, src, _)| *o == f.object && mine(src))
                        .map(|(_, _, ms)| *ms)
                        .min();
                    let lag = oldest.map(|ms| secs(now - ms)).unwrap_or(0.0);
                    let points = history.rates(THROUGHPUT_POINTS, |x| {
                        x.writes_applied.get(&f.object).copied().unwrap_or(0)
                    });
                    let failed = by_state(WriteState::Failed);
                    let conflicts = by_state(WriteState::Conflict);
                    let health = if failed > 0 {
                        (
                            "red",
                            format!("{failed} write(s) are dead letters (redrive or discard them)"),
                        )
                    } else if oldest.is_some() && lag > f.sla_secs as f64 {
                        by_lag(lag, f.sla_secs, "the oldest write waiting")
                    } else if conflicts > 0 {
                        (
                            "amber",
                            format!("{conflicts} write(s) wait in the conflict queue for a person"),
                        )
                    } else if oldest.is_some() {
                        by_lag(lag, f.sla_secs, "the oldest write waiting")
                    } else {
                        ("green", "no write waiting".to_string())
                    };
                    let mut c = serde_json::Map::new();
                    for state in WriteState::ALL {
                        c.insert(state.as_str().into(), json!(by_state(state)));
                    }
                    (Some(lag), None, None, Some(points), health, J::Object(c))
                }
                ("delivery", _) => {
                    let sink = f.sink.clone().unwrap_or_default();
                    let position = s
                        .store
                        .delivery_positions(&sink)
                        .await
                        .map_err(|e| ApiError::internal("reading the delivery positions", e))?
                        .into_iter()
                        .find(|p| p.object == f.object);
                    let (backlog, delivered) = match &position {
                        Some(p) => (
                            s.store
                                .delivery_backlog(&f.object, p.position)
                                .await
                                .map_err(|e| {
                                    ApiError::internal("reading the delivery backlog", e)
                                })?,
                            p.delivered,
                        ),
                        None => (Default::default(), 0),
                    };
                    let dead = s
                        .store
                        .delivery_dead_letters(
                            &sfsync_store::DeliveryDeadFilter {
                                sink: Some(sink.clone()),
                                object: Some(f.object.clone()),
                                states: vec![
                                    sfsync_store::DeliveryDeadState::Pending,
                                    sfsync_store::DeliveryDeadState::Redrive,
                                ],
                                after: None,
                                limit: 1000,
                            },
                            sfsync_store::PiiMode::Omit,
                        )
                        .await
                        .map_err(|e| ApiError::internal("reading the delivery dead letters", e))?
                        .len();
                    let lag = backlog.oldest_applied_at_ms.map(|t| secs(now - t));
                    let health = if position.is_none() {
                        (
                            "grey",
                            "the sink has not started on this object".to_string(),
                        )
                    } else if dead > 0 {
                        (
                            "red",
                            format!("{dead} change(s) are dead letters (redrive or discard them)"),
                        )
                    } else if let Some(l) = lag {
                        by_lag(l, f.sla_secs, "the oldest undelivered change waits")
                    } else {
                        ("green", "every applied change delivered".to_string())
                    };
                    (
                        lag,
                        None,
                        None,
                        None,
                        health,
                        json!({
                            "delivered": delivered,
                            "backlog": backlog.entries,
                            "dead_letters": dead,
                        }),
                    )
                }
                (_, pattern) => {
                    let kind = match pattern {
                        "reconciliation" => Some(SyncJobKind::Reconcile),
                        "formula refresh" => Some(SyncJobKind::FormulaRefresh),
                        "archive" => Some(SyncJobKind::Archive),
                        _ => None,
                    };
                    let last_run = match kind {
                        Some(kind) => s
                            .store
                            .sync_jobs(&SyncJobFilter {
                                kind: Some(kind),
                                object: Some(f.object.clone()),
                                statuses: vec![SyncJobStatus::Succeeded, SyncJobStatus::Failed],
                                newest_first: true,
                                limit: 1,
                            })
                            .await
                            .map_err(|e| ApiError::internal("reading the runs", e))?
                            .pop(),
                        None => None,
                    };
                    let health = match &last_run {
                        None => ("grey", format!("no finished {pattern} run yet")),
                        Some(j) if j.status == SyncJobStatus::Failed => (
                            "red",
                            format!(
                                "the last {pattern} run ({}) failed: {}",
                                j.id,
                                j.error.as_deref().unwrap_or("no error recorded")
                            ),
                        ),
                        Some(j) => {
                            let age = secs(now - j.finished_at_ms.unwrap_or(j.requested_at_ms));
                            // A scheduled flow is late when its last success is older than two
                            // periods.
                            if age > 2.0 * f.sla_secs as f64 {
                                (
                                    "amber",
                                    format!("the last {pattern} run finished {age:.0} s ago"),
                                )
                            } else {
                                (
                                    "green",
                                    format!("the last {pattern} run ({}) succeeded", j.id),
                                )
                            }
                        }
                    };
                    let finished = last_run.as_ref().and_then(|j| j.finished_at_ms);
                    (
                        None,
                        finished.map(|ms| secs(now - ms)),
                        None,
                        None,
                        health,
                        json!({ "last_run_id": last_run.as_ref().map(|j| j.id) }),
                    )
                }
            };
        o.insert("lag_seconds".into(), json!(lag));
        o.insert("freshness_seconds".into(), json!(freshness));
        o.insert(
            "last_applied_commit_time".into(),
            last_commit.unwrap_or(J::Null),
        );
        o.insert(
            "throughput".into(),
            json!({
                "interval_seconds": SAMPLE_EVERY.as_secs(),
                "points": points.unwrap_or_default(),
            }),
        );
        o.insert("health".into(), json!(health.0));
        o.insert("health_reason".into(), json!(health.1));
        o.insert("counts".into(), counts_json);
        out.push(flow);
    }
    super::routes::ok(json!({ "flows": out }))
}

/// A forecast of the allowance: when our calls at the current burn rate use it up.
fn forecast(b: &BudgetStatus) -> (Option<f64>, String) {
    match b.our_allowance {
        None => (
            None,
            "no forecast yet: Salesforce has not reported the org's limits".into(),
        ),
        Some(allow) if b.our_used >= allow => (
            Some(0.0),
            format!(
                "sfsync has used its whole allowance of {allow} calls in the rolling 24 h; \
                 lower lanes wait until calls age out of the window"
            ),
        ),
        Some(allow) if b.burn_per_min <= 0.0 => (
            None,
            format!(
                "{} of {allow} calls left; no calls in the last ten minutes",
                allow - b.our_used
            ),
        ),
        Some(allow) => {
            let left = (allow - b.our_used) as f64;
            let secs = left / b.burn_per_min * 60.0;
            let text = if secs > 86_400.0 {
                format!(
                    "{left:.0} calls left; at {:.1} calls/min the allowance lasts beyond the 24 h window",
                    b.burn_per_min
                )
            } else {
                format!(
                    "{left:.0} calls left; at {:.1} calls/min the allowance is used up in {}",
                    b.burn_per_min,
                    crate::map_cmd::human_secs(secs as u64)
                )
            };
            (Some(secs), text)
        }
    }
}

/// `GET /api/v1/budget`: the governor's view, its sampled history and a forecast.
pub async fn budget(State(s): State<Arc<ApiState>>, caller: Caller) -> super::routes::ApiResult {
    caller.require_viewer()?;
    let Some(source) = &s.budget else {
        return Err(ApiError::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "this process has no Salesforce client to report a budget for",
        ));
    };
    let b = source();
    let (exhausted_in, text) = forecast(&b);
    let points: Vec<J> = s
        .history
        .lock()
        .samples
        .iter()
        .filter(|x| x.our_used.is_some())
        .map(|x| json!({ "at": ts(x.at_ms), "our_used": x.our_used, "org_used": x.org_used }))
        .collect();
    let mut v = serde_json::to_value(&b).map_err(|e| ApiError::internal("encoding", e))?;
    let o = v
        .as_object_mut()
        .expect("the status serialises to an object");
    o.insert(
        "history".into(),
        json!({ "interval_seconds": SAMPLE_EVERY.as_secs(), "points": points }),
    );
    o.insert(
        "forecast".into(),
        json!({ "allowance_exhausted_in_seconds": exhausted_in, "text": text }),
    );
    super::routes::ok(v)
}

/// `GET /api/v1/map`: the integration map drawn from the config, with Mermaid and DOT text.
pub async fn map(State(s): State<Arc<ApiState>>, caller: Caller) -> super::routes::ApiResult {
    caller.require_viewer()?;
    let mut v = serde_json::to_value(&s.map).map_err(|e| ApiError::internal("encoding", e))?;
    let o = v.as_object_mut().expect("the map serialises to an object");
    o.insert("mermaid".into(), json!(s.map.mermaid()));
    o.insert("dot".into(), json!(s.map.dot()));
    let now = now_ms();
    if let Some(flows) = o.get_mut("flows").and_then(J::as_array_mut) {
        for (f, j) in s.map.flows.iter().zip(flows.iter_mut()) {
            if let Some(j) = j.as_object_mut() {
                j.insert("id".into(), json!(flow_id(f)));
                if let Some(live) = ingest_live(&s.stats, f, now) {
                    j.insert("live".into(), live);
                }
            }
        }
    }
    super::routes::ok(v)
}

/// What `flows` reports of one flow: lag, freshness, last commit, throughput points, health,
/// counts.
type FlowFigures = (
    Option<f64>,
    Option<f64>,
    Option<J>,
    Option<Vec<u64>>,
    (&'static str, String),
    J,
);

/// A platform-event flow's figures: in, the events of `/event/<name>` stored since start; out,
/// the events of `<name>` published and the publish queue (waiting, dead), read into `queue`
/// by the first outbound flow that needs it.
async fn platform_event_flow(
    s: &ApiState,
    direction: &str,
    name: &str,
    queue: &mut Option<sfsync_store::OutboundCounts>,
) -> Result<FlowFigures, ApiError> {
    let Some(ev) = &s.events else {
        return Ok((
            None,
            None,
            None,
            None,
            (
                "grey",
                "platform events are not running in this process".into(),
            ),
            J::Null,
        ));
    };
    if direction == "inbound" {
        let channel = format!("/event/{name}");
        let c = ev
            .stats
            .channels()
            .into_iter()
            .find(|(k, _)| *k == channel)
            .map(|(_, c)| c)
            .unwrap_or_default();
        let health = if c.received > 0 {
            (
                "green",
                format!("{} event(s) stored since start", c.received),
            )
        } else {
            ("grey", "no event received since start".to_string())
        };
        return Ok((
            None,
            None,
            None,
            None,
            health,
            json!({ "received": c.received, "duplicates": c.duplicates }),
        ));
    }
    let published = ev
        .stats
        .published_by_event()
        .into_iter()
        .find(|(k, _)| k == name)
        .map_or(0, |(_, n)| n);
    let q = match *queue {
        Some(q) => q,
        None => *queue.insert(
            s.store
                .outbound_counts()
                .await
                .map_err(|e| ApiError::internal("counting the platform events", e))?,
        ),
    };
    // The queue's counts cover every event name.
    let health = if q.dead > 0 {
        (
            "red",
            format!("{} platform event(s) are publish dead letters", q.dead),
        )
    } else if q.pending > 0 {
        (
            "green",
            format!("{} platform event(s) waiting to be published", q.pending),
        )
    } else {
        ("green", "nothing waiting to be published".to_string())
    };
    Ok((
        None,
        None,
        None,
        None,
        health,
        json!({
            "published": published,
            "pending_all_events": q.pending,
            "dead_all_events": q.dead,
        }),
    ))
}

/// The live state of a CDC or polled flow: its mode now (a CDC object may be polled while its
/// stream is unusable) and, while it is polled, its rounds, calls and cursor.
fn ingest_live(stats: &sfsync_pipeline::PipelineStats, f: &Flow, now: i64) -> Option<J> {
    if f.direction != "inbound" || !matches!(f.pattern, "CDC stream" | "polling") {
        return None;
    }
    let flow = stats.flow_mode(&f.object)?;
    let mut live = json!({
        "mode": flow.mode.as_str(),
        "channel": flow.channel,
        "mode_since": (flow.since_ms > 0).then(|| ts(flow.since_ms)),
    });
    if let Some(p) = stats.poll_channel(&sfsync_pipeline::poll::channel(&f.object)) {
        live["poll"] = json!({
            "rounds": p.rounds,
            "rows_read": p.rows,
            "rows_appended": p.appended,
            "duplicates_dropped": p.duplicates,
            "api_calls": p.api_calls,
            "cursor": (p.cursor_ms > 0).then(|| ts(p.cursor_ms)),
            "cursor_lag_seconds": (p.cursor_ms > 0).then(|| secs(now - p.cursor_ms)),
            "last_round_at": (p.last_round_ms > 0).then(|| ts(p.last_round_ms)),
            "last_round_seconds_ago": (p.last_round_ms > 0).then(|| secs(now - p.last_round_ms)),
            "lag_bound_seconds": p.lag_bound_ms().map(|ms| ms as f64 / 1000.0),
        });
    }
    Some(live)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(changes: u64) -> Sample {
        Sample {
            changes: [("Case".to_string(), changes)].into(),
            ..Default::default()
        }
    }

    #[test]
    fn rates_are_differences_of_readings_and_the_history_is_bounded() {
        let mut h = History::default();
        assert!(h.rates(10, |_| 0).is_empty());
        for c in [0, 5, 5, 12] {
            h.push(sample(c));
        }
        let case = |x: &Sample| x.changes.get("Case").copied().unwrap_or(0);
        assert_eq!(h.rates(10, case), vec![5, 0, 7]);
        assert_eq!(h.rates(2, case), vec![0, 7]);
        for c in 0..(HISTORY_POINTS as u64 + 10) {
            h.push(sample(100 + c));
        }
        assert_eq!(h.samples.len(), HISTORY_POINTS);
        assert_eq!(h.rates(1, case), vec![1]);
    }

    #[test]
    fn inbound_health_follows_the_sync_status() {
        let row = |status, lag| SyncStatus {
            state: sfsync_store::SyncStatusState {
                object: "Case".into(),
                last_commit_ms: None,
                last_applied_ms: None,
                current_as_of_ms: None,
                open_repairs: 0,
                open_resyncs: 0,
                backfill_running: false,
                last_reconcile_ms: None,
                last_reconcile_result: None,
                last_reconcile_detail: None,
                delayed_after_secs: 120,
                updated_ms: 0,
            },
            lag_seconds: lag,
            status,
            status_reason: "why".into(),
        };
        assert_eq!(
            inbound_health(&row(FreshnessStatus::Current, Some(3.0)), 120).0,
            "green"
        );
        assert_eq!(
            inbound_health(&row(FreshnessStatus::Current, Some(90.0)), 120).0,
            "amber"
        );
        assert_eq!(
            inbound_health(&row(FreshnessStatus::Partial, Some(3.0)), 120),
            ("amber", "partial: why".to_string())
        );
        assert_eq!(
            inbound_health(&row(FreshnessStatus::Delayed, None), 120),
            ("red", "delayed: why".to_string())
        );
    }

    #[test]
    fn lag_health_follows_the_sla() {
        assert_eq!(by_lag(10.0, 120, "lag").0, "green");
        assert_eq!(by_lag(61.0, 120, "lag").0, "amber");
        assert_eq!(by_lag(121.0, 120, "lag").0, "red");
        assert!(by_lag(121.0, 120, "lag")
            .1
            .contains("over the SLA of 120 s"));
    }
}
