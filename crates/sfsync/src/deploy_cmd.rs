//! `sfsync run --config DEPLOYMENT.toml`: several Salesforce orgs (tenants) in one process.
//!
//! Guarantees:
//! - **Isolation.** Each org runs its own service — its own Salesforce client and budget
//!   governor, Pub/Sub subscriber, warehouse namespace, raw-log topic, writeback deliverer and
//!   sinks — on its own tasks. Nothing is shared between orgs but the process and the
//!   deployment's API listener, so one org being throttled (its budget deferring work, its API
//!   refusing calls) or failing never holds another's stream up.
//! - **A failing org is retried, not fatal.** An org that cannot start (Salesforce or its
//!   warehouse unreachable, credentials refused, a secret missing) is reported as `failed`
//!   with its error and retried with backoff (2 s doubling to 60 s) while the others run.
//! - **One place to look.** The deployment's `[api]` serves every org's metrics labelled
//!   `org="<name>"`, each org's state, and each org's API under `/orgs/<name>/` (see
//!   [`crate::api::deployment`]); progress lines are prefixed with the org's name.
//! - SIGTERM stops every org gracefully (each with its final checkpoint), in parallel.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use tokio::sync::watch;

use crate::api::auth::KnownToken;
use crate::api::deployment::{DeploymentState, OrgSlot};
use crate::config::deployment::{load_deployment, DeployedOrg};
use crate::config::secrets::ApiToken;
use crate::config::validate::ValidApi;
use crate::run_cmd::{progress_line, start_service, Role, RunArgs, ServiceApi, StartAt};

/// The first and the longest wait between start attempts of a failed org.
const FIRST_RETRY: Duration = Duration::from_secs(2);
const MAX_RETRY: Duration = Duration::from_secs(60);

/// Runs the deployment at `args.config` until `signal`.
pub async fn run<S: Future<Output = ()> + Unpin>(args: RunArgs, mut signal: S) -> Result<()> {
    let deployment = load_deployment(&args.config).map_err(|e| {
        let n = e.count();
        anyhow!(
            "{e}\n{n} error{} in the deployment",
            if n == 1 { "" } else { "s" }
        )
    })?;
    let tokens = deployment
        .resolve_api_tokens(&|name| std::env::var(name).ok())
        .map_err(|e| anyhow!("{e}"))?;
    let bound = match &deployment.api {
        Some(api) => crate::api::bind(api).await?,
        None => None,
    };
    let max_body = bound.as_ref().map_or(1 << 20, |b| b.max_body_bytes());
    let slots: Vec<Arc<OrgSlot>> = deployment
        .orgs
        .iter()
        .map(|o| Arc::new(OrgSlot::new(&o.name)))
        .collect();
    let api_settings: Option<Arc<(ValidApi, Vec<ApiToken>)>> = deployment
        .api
        .clone()
        .map(|a| Arc::new((a, tokens.clone())));
    let running_api = bound.map(|b| {
        let state = Arc::new(DeploymentState {
            orgs: slots.clone(),
            tokens: tokens.iter().map(KnownToken::from_config).collect(),
            metrics_public: deployment.api.as_ref().is_some_and(|a| a.metrics_public),
        });
        b.serve_router(crate::api::deployment::router(state))
    });
    eprintln!(
        "sfsync run: deployment {} with {} org(s): {}",
        deployment.file,
        deployment.orgs.len(),
        deployment
            .orgs
            .iter()
            .map(|o| o.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    if let Some(api) = &running_api {
        let tls = deployment.api.as_ref().is_some_and(|a| a.tls.is_some());
        eprintln!(
            "Deployment API on {}://{} (each org under /orgs/<name>/, {} tokens)",
            if tls { "https" } else { "http" },
            api.addr,
            tokens.len()
        );
    }

    let (stop_tx, stop_rx) = watch::channel(false);
    let mut supervisors = Vec::new();
    for (org, slot) in deployment.orgs.iter().zip(&slots) {
        supervisors.push(tokio::spawn(supervise(
            org.clone(),
            slot.clone(),
            args.start,
            args.role,
            api_settings.clone(),
            max_body,
            stop_rx.clone(),
        )));
    }

    let started = Instant::now();
    let mut last: HashMap<String, u64> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_secs(args.progress_secs.max(1)));
    tick.tick().await;
    let mut stats_tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            _ = &mut signal => break,
            _ = tick.tick() => {
                if args.progress_secs > 0 {
                    progress(&slots, started, &mut last);
                }
            }
            _ = stats_tick.tick(), if args.stats_file.is_some() => {
                if let Some(p) = &args.stats_file {
                    write_stats(p, &slots);
                }
            }
        }
    }
    eprintln!("Stopping every org: committing their final checkpoints…");
    if let Some(api) = running_api {
        api.stop().await;
    }
    let _ = stop_tx.send(true);
    for s in supervisors {
        let _ = s.await;
    }
    progress(&slots, started, &mut last);
    if let Some(p) = &args.stats_file {
        write_stats(p, &slots);
    }
    eprintln!("Stopped cleanly.");
    Ok(())
}

fn progress(slots: &[Arc<OrgSlot>], started: Instant, last: &mut HashMap<String, u64>) {
    for s in slots {
        let stats = s.stats.lock().clone();
        match stats {
            Some(stats) => {
                let l = last.entry(s.name.clone()).or_default();
                eprintln!(
                    "org {}: {}",
                    s.name,
                    progress_line(&stats, started.elapsed(), l)
                );
            }
            None => {
                let st = s.status.lock().clone();
                eprintln!(
                    "org {}: {}{}",
                    s.name,
                    st.state,
                    st.last_error.map(|e| format!(" ({e})")).unwrap_or_default()
                );
            }
        }
    }
}

/// `{"orgs": {"<name>": <counters>|null}}`, through a temporary file and a rename.
fn write_stats(path: &std::path::Path, slots: &[Arc<OrgSlot>]) {
    let mut orgs = serde_json::Map::new();
    for s in slots {
        let v = s
            .stats
            .lock()
            .as_ref()
            .map(|st| st.snapshot())
            .unwrap_or(serde_json::Value::Null);
        orgs.insert(s.name.clone(), v);
    }
    crate::run_cmd::write_stats_text(path, &serde_json::json!({ "orgs": orgs }).to_string());
}

/// Starts `org`'s service, retrying with backoff while it fails, and keeps it until `stop`.
async fn supervise(
    org: DeployedOrg,
    slot: Arc<OrgSlot>,
    start: StartAt,
    role: Role,
    api: Option<Arc<(ValidApi, Vec<ApiToken>)>>,
    max_body: usize,
    mut stop: watch::Receiver<bool>,
) {
    let mut config = org.loaded.config.clone();
    // The deployment's listener serves the org's API.
    config.api = None;
    let mut backoff = FIRST_RETRY;
    loop {
        if *stop.borrow() {
            slot.set("stopped", None);
            return;
        }
        slot.set("starting", None);
        let attempt = async {
            // Secret resolution reads the environment through a non-`Sync` closure: it runs on
            // a blocking thread of its own (it may call AWS).
            let loaded = org.loaded.clone();
            let handle = tokio::runtime::Handle::current();
            let secrets = tokio::task::spawn_blocking(move || {
                handle.block_on(loaded.resolve_secrets_from_env())
            })
            .await
            .map_err(|e| anyhow!("resolving the org's secrets: {e}"))?
            .map_err(|e| anyhow!("{e}"))?;
            let mode = match api.as_deref() {
                Some((a, t)) => ServiceApi::Shared { api: a, tokens: t },
                None => ServiceApi::Off,
            };
            start_service(&config, &secrets, start, &org.path, role, mode).await
        };
        let outcome = tokio::select! {
            r = attempt => r,
            _ = stop.wait_for(|s| *s) => {
                slot.set("stopped", None);
                return;
            }
        };
        match outcome {
            Ok(service) => {
                let run_id = service.running.run_id.clone();
                *slot.stats.lock() = Some(service.running.stats.clone());
                let sampler = service.api_state.clone().map(|state| {
                    slot.serve(state.clone(), max_body);
                    crate::api::spawn_sampler(state)
                });
                slot.set("running", Some(run_id.clone()));
                eprintln!(
                    "org {}: running {run_id} ({} objects into {})",
                    org.name,
                    service.running.mappings.len(),
                    config.warehouse.describe()
                );
                let _ = stop.wait_for(|s| *s).await;
                slot.set("stopping", Some(run_id));
                slot.unserve();
                if let Some(s) = sampler {
                    s.abort();
                }
                if let Err(e) = service.stop().await {
                    eprintln!("org {}: stopping failed: {e:#}", org.name);
                }
                slot.set("stopped", None);
                return;
            }
            Err(e) => {
                let message = format!("{e:#}");
                eprintln!(
                    "org {}: could not start: {message}; next attempt in {} s (the other orgs \
                     are not affected)",
                    org.name,
                    backoff.as_secs()
                );
                slot.failed(message, backoff);
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.wait_for(|s| *s) => {
                        slot.set("stopped", None);
                        return;
                    }
                }
                backoff = (backoff * 2).min(MAX_RETRY);
            }
        }
    }
}
