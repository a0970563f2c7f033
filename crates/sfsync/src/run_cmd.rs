//! `sfsync run --config FILE`: the production process. Loads and validates the config, reads
//! secrets, opens the warehouse (SQLite or Postgres) with the PII keyring, connects to
//! Salesforce (REST for describe and repairs, Pub/Sub for CDC) and runs the pipeline until
//! SIGTERM/SIGINT, then stops gracefully with a final checkpoint. Restarting resumes from the
//! stored replay ids and apply offset; a SIGKILL loses nothing either (see the pipeline crate).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Args;
use sfsync_pipeline::{ApplyConfig, HistoryFields, ObjectSpec, PipelineConfig, PipelineStats};
use sfsync_salesforce::pubsub::{ReplayStart, Subscriber, SubscriberConfig};
use sfsync_salesforce::{ClientConfig, SalesforceClient, TokenSource};
use sfsync_store::{Keyring, PostgresChangeLog, SqliteChangeLog, Store, Warehouse, WriteLedger};

use crate::config::model::{HistoryFields as CfgHistory, SyncMode};
use crate::config::secrets::ResolvedSecrets;
use crate::config::validate::{ValidConfig, ValidWarehouse};

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The sfsync TOML config.
    #[arg(long)]
    pub config: PathBuf,
    /// Where a channel with no stored replay id starts: the oldest retained event
    /// (`earliest`, the default: nothing retained is missed) or only new events (`latest`).
    #[arg(long, value_enum, default_value_t = StartAt::Earliest)]
    pub start: StartAt,
    /// Seconds between progress lines on stderr (0: none).
    #[arg(long, default_value_t = 10)]
    pub progress_secs: u64,
    /// Rewrite this file with every pipeline counter as JSON every 200 ms (atomically), for
    /// scripts and `sfsync bench pipeline`.
    #[arg(long)]
    pub stats_file: Option<PathBuf>,
    /// What this process runs: everything (`all`, the default), only the ingest subscribers
    /// (`ingest`; each channel under a lease, so one process across the deployment streams it),
    /// only the apply stage (`apply`; with `[log] backend = "kafka"` several apply workers share
    /// the topic's partitions), or only the writeback deliverer and delivery sinks (`writeback`).
    #[arg(long, value_enum, default_value_t = Role::All)]
    pub role: Role,
}

/// `sfsync run --role`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Role {
    All,
    Ingest,
    Apply,
    Writeback,
}

impl Role {
    fn pipeline(self) -> sfsync_pipeline::Roles {
        sfsync_pipeline::Roles {
            ingest: matches!(self, Role::All | Role::Ingest),
            apply: matches!(self, Role::All | Role::Apply),
        }
    }

    fn outbound(self) -> bool {
        matches!(self, Role::All | Role::Writeback)
    }
}

/// Writes `stats` to `path` through a temporary file and a rename, so readers never see half.
fn write_stats(path: &Path, stats: &PipelineStats) {
    write_stats_text(path, &stats.snapshot().to_string());
}

/// Replaces the stats file at `path` with `text` through a temporary file and a rename.
pub fn write_stats_text(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    if let Err(e) = std::fs::write(&tmp, text).and_then(|_| std::fs::rename(&tmp, path)) {
        tracing::warn!(path = %path.display(), error = %e, "Could not write the stats file.");
    }
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum StartAt {
    Earliest,
    Latest,
}

/// Loads the config and secrets, or prints every problem (`file:line:col: key: message`).
pub async fn load(path: &Path) -> Result<(ValidConfig, ResolvedSecrets)> {
    let loaded = crate::config::load(path).map_err(|e| anyhow::anyhow!("{e}"))?;
    let secrets = loaded
        .resolve_secrets_from_env()
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok((loaded.config, secrets))
}

/// Opens the configured warehouse with the PII keyring (when configured).
pub async fn open_store(
    config: &ValidConfig,
    secrets: &ResolvedSecrets,
) -> Result<Arc<dyn Warehouse>> {
    Ok(open_stores(config, secrets).await?.warehouse)
}

/// One opened store seen as the pipeline's [`Warehouse`] and as the API's [`Store`] (the same
/// connection).
pub struct Stores {
    pub warehouse: Arc<dyn Warehouse>,
    pub full: Arc<dyn Store>,
    /// The write ledger (writeback delivery).
    pub ledger: Arc<dyn WriteLedger>,
}

fn both<T: Store + 'static>(s: T) -> Stores {
    let s = Arc::new(s);
    Stores {
        warehouse: s.clone(),
        ledger: s.clone(),
        full: s,
    }
}

/// Opens the configured warehouse with the PII keyring (when configured).
pub async fn open_stores(config: &ValidConfig, secrets: &ResolvedSecrets) -> Result<Stores> {
    let keyring = keyring(secrets)?;
    let store = match &config.warehouse {
        ValidWarehouse::Sqlite { path } => {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
            }
            let s = SqliteChangeLog::open(path)
                .await
                .with_context(|| format!("opening the SQLite warehouse {}", path.display()))?;
            s.set_keyring(keyring);
            both(s)
        }
        ValidWarehouse::Postgres { schema, .. } => {
            let url = secrets
                .warehouse_url
                .as_ref()
                .context("the Postgres warehouse URL was not resolved")?;
            let s = connect_postgres(url.expose(), schema).await?;
            s.set_keyring(keyring);
            both(s)
        }
    };
    Ok(store)
}

/// Connects to Postgres with `search_path` set to `schema` (created if missing).
pub async fn connect_postgres(url: &str, schema: &str) -> Result<PostgresChangeLog> {
    let mut pg: tokio_postgres::Config = url
        .parse()
        .context("the warehouse URL is not a valid Postgres connection string")?;
    {
        let (client, conn) = pg
            .connect(tokio_postgres::NoTls)
            .await
            .context("connecting to the Postgres warehouse")?;
        let task = tokio::spawn(conn);
        client
            .batch_execute(&format!(
                "CREATE SCHEMA IF NOT EXISTS \"{}\"",
                schema.replace('"', "")
            ))
            .await
            .with_context(|| format!("creating schema {schema}"))?;
        drop(client);
        let _ = task.await;
    }
    pg.options(format!("-c search_path={schema}"));
    PostgresChangeLog::connect_with(&pg)
        .await
        .context("opening the Postgres warehouse")
}

/// The keyring of the configured PII keys (`None` without `[pii]`): the current key seals, the
/// `[[pii.old_keys]]` only open. An unusable key id is an error naming it (never the key), not a
/// panic.
fn keyring(secrets: &ResolvedSecrets) -> Result<Option<Arc<Keyring>>> {
    let Some(current) = &secrets.pii_key else {
        return Ok(None);
    };
    let mut ring = Keyring::try_new(&current.id, current.key)
        .with_context(|| format!("pii.key_id '{}' cannot be used", current.id))?;
    for (i, old) in secrets.pii_old_keys.iter().enumerate() {
        ring.try_add_old_key(&old.id, old.key)
            .with_context(|| format!("pii.old_keys[{i}].key_id '{}' cannot be used", old.id))?;
    }
    Ok(Some(Arc::new(ring)))
}

/// The pipeline's object specs from the config: CDC objects on their channel, Outbound-Message
/// objects on their flow's push channel, polled objects on `/poll/<Object>`.
pub fn object_specs(config: &ValidConfig) -> Vec<ObjectSpec> {
    let mut out = Vec::new();
    for o in &config.objects {
        // An Outbound-Message-only object is fed through its first flow's push channel.
        let pushed = (o.mode == SyncMode::OutboundMessage)
            .then(|| {
                config
                    .outbound_messages
                    .iter()
                    .find(|f| f.object == o.name)
                    .map(|f| sfsync_pipeline::outbound::channel(&f.name))
            })
            .flatten();
        let polled = (o.mode == SyncMode::Poll).then(|| sfsync_pipeline::poll::channel(&o.name));
        let Some(channel) = o.channel.clone().or(pushed).or(polled) else {
            continue;
        };
        out.push(ObjectSpec {
            name: o.name.clone(),
            channel,
            history: match &o.history {
                None => HistoryFields::None,
                Some(CfgHistory::All) => HistoryFields::All,
                Some(CfgHistory::List(l)) => HistoryFields::Fields(l.clone()),
            },
            pii_fields: o.pii_fields.clone(),
            quality: o.quality.clone(),
            formula_fields: o.formula_fields.clone(),
        });
    }
    out
}

/// A REST (and Bulk API 2.0) client for the configured org.
pub fn rest_client(config: &ValidConfig, secrets: &ResolvedSecrets) -> Result<SalesforceClient> {
    let mut cc = ClientConfig::new(secrets.instance_url.clone(), secrets.ca_file.clone());
    cc.call_options_client = Some(config.salesforce.client_id_header.clone());
    cc.budget = config.salesforce.budget.clone();
    Ok(SalesforceClient::new(cc, secrets.credentials.clone())?)
}

/// A REST client and a Pub/Sub subscriber for the configured org.
pub async fn connect_salesforce(
    config: &ValidConfig,
    secrets: &ResolvedSecrets,
) -> Result<(SalesforceClient, Subscriber)> {
    let client = rest_client(config, secrets)?;
    let tokens = Arc::new(TokenSource::new(
        client.http().clone(),
        secrets.credentials.clone(),
    ));
    let address = secrets
        .pubsub_address
        .clone()
        .unwrap_or_else(|| "api.pubsub.salesforce.com:7443".to_string());
    let mut sc = SubscriberConfig::new(address, secrets.ca_file.clone());
    sc.batch_size = config.pipeline.fetch_records.clamp(1, 100) as u32;
    sc.top_up_at = sc.batch_size / 2;
    let subscriber = Subscriber::connect(sc, tokens)
        .await
        .context("connecting to the Pub/Sub API")?;
    Ok((client, subscriber))
}

/// The pipeline config from the file.
pub fn pipeline_config(config: &ValidConfig, start: StartAt) -> PipelineConfig {
    PipelineConfig {
        objects: object_specs(config),
        apply: ApplyConfig {
            batch_max_records: config.pipeline.batch_max_records as usize,
            gap_reread_batch_records: config.pipeline.gap_reread_batch_records as usize,
            own_client: config.salesforce.client_id_header.clone(),
            run_id: new_run_id(),
            max_stored_failures_per_rule: config.pipeline.max_stored_failures_per_rule,
            jobs: sfsync_pipeline::jobs::JobsConfig {
                backfill_new_objects: config.pipeline.backfill_new_objects,
                page_records: config.pipeline.backfill_page_records,
                reconcile_every: config
                    .pipeline
                    .reconcile_interval_secs
                    .map(Duration::from_secs),
                formula_refresh_every: Some(Duration::from_secs(
                    config.pipeline.formula_refresh_secs.max(1),
                )),
                slice_span: Some(Duration::from_secs(config.pipeline.job_slice_secs.max(1))),
                ..Default::default()
            },
            maintenance: maintenance_config(config, None),
            deliver: !config.sinks.is_empty(),
        },
        initial: match start {
            StartAt::Earliest => ReplayStart::Earliest,
            StartAt::Latest => ReplayStart::Latest,
        },
        idle_wait: Duration::from_millis(config.pipeline.batch_max_wait_ms),
        bulk: None,
        echo_ledger: None,
        freshness: Some(freshness_config(config)),
        roles: sfsync_pipeline::Roles::default(),
        kafka_log: config.log.kafka.clone(),
        // On Postgres several processes may share the warehouse: each channel's subscriber
        // holds a lease (SQLite is one machine, one process).
        ingest_lease: matches!(
            config.warehouse,
            crate::config::validate::ValidWarehouse::Postgres { .. }
        )
        .then(|| (config.log.node_name.clone(), config.log.lease_ttl)),
        event_channels: config.platform_events.subscribe.clone(),
        deliver_events: !config.sinks.is_empty(),
        poll_client: None,
        poll: poll_config(config),
        cdc_fallback: config
            .pipeline
            .cdc_fallback
            .then(|| Duration::from_secs(config.pipeline.cdc_fallback_after_secs)),
    }
}

/// How `mode = "poll"` objects are read (`[pipeline] poll_*`; Bulk result pages of
/// `backfill_page_records`).
pub fn poll_config(config: &ValidConfig) -> sfsync_pipeline::poll::PollConfig {
    let p = &config.pipeline;
    let page = usize::try_from(p.poll_page_records)
        .unwrap_or(usize::MAX)
        .max(1);
    sfsync_pipeline::poll::PollConfig {
        interval: Duration::from_secs(p.poll_interval_secs.max(1)),
        overlap: Duration::from_secs(p.poll_overlap_secs),
        page_records: page,
        batch_size: page.clamp(200, 2_000) as u32,
        bulk_threshold: p.poll_bulk_threshold,
        bulk_page_records: p.backfill_page_records.max(1),
    }
}

/// The publisher settings of `[platform_events]`; the claimer names this process and run.
pub fn publisher_config(
    config: &ValidConfig,
    run_id: &str,
) -> sfsync_pipeline::events::publish::PublisherConfig {
    let pe = &config.platform_events;
    sfsync_pipeline::events::publish::PublisherConfig {
        claimer: format!("{run_id}-pid{}", std::process::id()),
        batch_max: pe.publish_batch_max,
        max_attempts: pe.publish_max_attempts,
        retry_base: Duration::from_millis(pe.publish_retry_base_ms),
        retry_max: Duration::from_secs(pe.publish_retry_max_secs),
        ..Default::default()
    }
}

/// The freshness contract's settings: `[freshness]`, each object's `sla_secs` as its own
/// threshold.
pub fn freshness_config(config: &ValidConfig) -> sfsync_pipeline::freshness::FreshnessConfig {
    let f = &config.freshness;
    sfsync_pipeline::freshness::FreshnessConfig {
        update_every: Duration::from_secs(f.update_every_secs.max(1)),
        delayed_after_secs: f.delayed_after_secs,
        delayed_after_by_object: config
            .objects
            .iter()
            .filter_map(|o| o.sla_secs.map(|s| (o.name.clone(), s)))
            .collect(),
    }
}

/// Archive and retention settings of `[archive]`, with the opened archive (`archive`; the
/// pipeline config is built before it is opened, see [`open_archive`]).
pub fn maintenance_config(
    config: &ValidConfig,
    archive: Option<Arc<sfsync_store::archive::Archive>>,
) -> sfsync_pipeline::maintenance::MaintenanceConfig {
    let a = &config.archive;
    let days = |d: u64| Duration::from_secs(d.saturating_mul(86_400));
    sfsync_pipeline::maintenance::MaintenanceConfig {
        archive,
        hot_retention: days(a.hot_retention_days),
        archive_retention: days(a.retention_days),
        audit_retention: days(a.audit_retention_days),
        archive_every: Some(Duration::from_secs(a.every_secs.max(1))),
        retention_every: Some(Duration::from_secs(a.retention_every_secs.max(1))),
        ..Default::default()
    }
}

/// Opens the configured archive (none when archiving is off).
pub fn open_archive(config: &ValidConfig) -> Result<Option<Arc<sfsync_store::archive::Archive>>> {
    let Some(location) = &config.archive.location else {
        return Ok(None);
    };
    let archive = sfsync_store::archive::Archive::open(location)
        .with_context(|| format!("archive.location: cannot open {location}"))?;
    Ok(Some(Arc::new(archive)))
}

/// The deliverer settings of `[writeback]`; the claimer names this process and run.
pub fn delivery_config(
    config: &ValidConfig,
    run_id: &str,
) -> sfsync_pipeline::writeback::DeliveryConfig {
    let d = &config.writeback_delivery;
    sfsync_pipeline::writeback::DeliveryConfig {
        claimer: format!("{run_id}-pid{}", std::process::id()),
        linger: Duration::from_millis(d.linger_ms),
        max_batch: d.max_batch as usize,
        bulk_threshold: d.bulk_threshold as usize,
        max_attempts: d.max_attempts,
        lease: Duration::from_secs(d.lease_secs),
        parent_fields: d.parent_fields.clone(),
        ..Default::default()
    }
}

pub fn new_run_id() -> String {
    format!(
        "run-{}-{}",
        chrono::Utc::now().format("%Y%m%dT%H%M%SZ"),
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}

/// One progress line.
pub fn progress_line(stats: &PipelineStats, elapsed: Duration, last_applied: &mut u64) -> String {
    let applied = PipelineStats::get(&stats.applied);
    let rate = (applied - *last_applied) as f64;
    *last_applied = applied;
    let lag = stats
        .last_commit_ms
        .load(std::sync::atomic::Ordering::Relaxed);
    let lag = if lag > 0 {
        format!("{:.1}s", (now_ms() - lag) as f64 / 1000.0)
    } else {
        "-".into()
    };
    format!(
        "{:>6.0}s ingested {:>9} applied {:>9} ({:>7.0}/interval) lag {:>7} repairs {} dead letters {} errors {}",
        elapsed.as_secs_f64(),
        PipelineStats::get(&stats.ingested),
        applied,
        rate,
        lag,
        PipelineStats::get(&stats.repairs_done),
        PipelineStats::get(&stats.dead_letters),
        PipelineStats::get(&stats.errors),
    )
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Everything `sfsync run` serves, started: the pipeline, the writeback deliverer and the API.
/// `sfsync demo` runs the same service against its embedded org.
pub struct Service {
    pub running: sfsync_pipeline::RunningPipeline,
    /// The API's address (`None`: the API is off or its default address was taken).
    pub api_addr: Option<std::net::SocketAddr>,
    api: Option<crate::api::RunningApi>,
    wb_stop: tokio::sync::watch::Sender<bool>,
    deliverer: Option<tokio::task::JoinHandle<()>>,
    /// The platform-event publisher (`None`: nothing to publish, or not this role).
    publisher: Option<tokio::task::JoinHandle<()>>,
    /// The delivery sinks (`None`: no `[[sinks]]`).
    sinks: Option<sfsync_pipeline::sinks::RunningSinks>,
    shutdown_timeout: Duration,
    /// The API state of a service in a deployment ([`ServiceApi::Shared`]): the deployment's
    /// listener serves it under `/orgs/<name>/`.
    pub api_state: Option<Arc<crate::api::ApiState>>,
}

/// Which API a service serves.
#[derive(Clone, Copy)]
pub enum ServiceApi<'a> {
    /// Its config's own `[api]` (one org per process).
    Own,
    /// No listener of its own: its API state is built with a deployment's `[api]` settings and
    /// tokens, and the deployment's listener serves it.
    Shared {
        api: &'a crate::config::ValidApi,
        tokens: &'a [crate::config::secrets::ApiToken],
    },
    /// No API at all (a deployment whose `[api]` is off).
    Off,
}

/// Starts the service of `config` (the API's address and certificate are checked before
/// anything else starts).
pub async fn start_service(
    config: &ValidConfig,
    secrets: &ResolvedSecrets,
    start: StartAt,
    config_path: &Path,
    role: Role,
    service_api: ServiceApi<'_>,
) -> Result<Service> {
    let api = match (service_api, &config.api) {
        (ServiceApi::Own, Some(api)) => crate::api::bind(api).await?,
        _ => None,
    };
    let stores = open_stores(config, secrets).await?;
    let store = stores.warehouse.clone();
    let ledger = stores.ledger.clone();
    let (client, subscriber) = connect_salesforce(config, secrets).await?;
    let publish_subscriber = subscriber.clone();
    let mut pc = pipeline_config(config, start);
    if let Some(k) = pc.kafka_log.as_mut() {
        k.kafka.sasl_password = secrets.log_sasl_password.clone();
    }
    pc.roles = role.pipeline();
    pc.apply.maintenance.archive = open_archive(config)?;
    pc.bulk = Some(client.bulk());
    // Polling is the flow's ingest itself: charged with the re-reads that keep other flows
    // complete (gap repair), after writeback and before reconciliation and backfills.
    pc.poll_client = Some(client.lane(sfsync_salesforce::Lane::GapRepair));
    let writeback = !config.writeback.objects.is_empty() && role.outbound();
    if writeback {
        pc.echo_ledger = Some(sfsync_pipeline::writeback::EchoLedger(ledger.clone()));
    }
    if pc.objects.is_empty() {
        anyhow::bail!("{}: no object to sync", config_path.display());
    }
    let running = sfsync_pipeline::start(
        store.clone(),
        Arc::new(client.lane(sfsync_salesforce::Lane::GapRepair)),
        subscriber,
        pc,
    )
    .await
    .context("starting the pipeline")?;
    eprintln!(
        "sfsync run {}: {} objects into {} (role {role:?}, raw log in {})",
        running.run_id,
        running.mappings.len(),
        config.warehouse.describe(),
        match &config.log.kafka {
            Some(k) => format!("kafka topic {}", k.topic),
            None => "the warehouse".into(),
        }
    );
    let (wb_stop, wb_rx) = tokio::sync::watch::channel(false);
    let publish_rx = wb_rx.clone();
    let deliverer = writeback.then(|| {
        let d = sfsync_pipeline::writeback::Deliverer::new(
            store.clone(),
            ledger.clone(),
            &client,
            config.writeback.clone(),
            delivery_config(config, &running.run_id),
            running.stats.clone(),
        )
        .with_echo(running.echo.clone());
        eprintln!(
            "Writeback: delivering writes to {} object(s) as client={}",
            config.writeback.objects.len(),
            config.salesforce.client_id_header
        );
        tokio::spawn(d.run(wb_rx))
    });
    let publisher = (role.outbound() && !config.platform_events.publish.is_empty()).then(|| {
        sfsync_pipeline::events::publish::Publisher::new(
            store.clone(),
            client.clone(),
            publish_subscriber,
            publisher_config(config, &running.run_id),
            running.events.clone(),
        )
    });
    let publish_waker = publisher.as_ref().map(|p| p.waker());
    if publisher.is_some() {
        eprintln!(
            "Platform events: publishing {} within the hourly allocation",
            config.platform_events.publish.join(", ")
        );
    }
    let publisher = publisher.map(|p| tokio::spawn(p.run(publish_rx)));
    if !config.platform_events.subscribe.is_empty() && role.pipeline().ingest {
        eprintln!(
            "Platform events: subscribed to {}",
            config.platform_events.subscribe.join(", ")
        );
    }
    let sinks = if role.outbound() {
        let events = SinkEvents {
            store: store.clone(),
            stats: running.events.clone(),
            publisher: publish_waker.clone(),
        };
        start_sinks(config, secrets, store.clone(), ledger.clone(), &events)?
    } else {
        None
    };
    let api_settings = match service_api {
        ServiceApi::Own => config
            .api
            .as_ref()
            .map(|a| (a, secrets.api_tokens.as_slice())),
        ServiceApi::Shared { api, tokens } => Some((api, tokens)),
        ServiceApi::Off => None,
    };
    let state = api_settings.map(|(api_config, tokens)| {
        let mut state = crate::api::ApiState::new(
            config,
            api_config,
            tokens,
            stores.full.clone(),
            running.stats.clone(),
            running.run_id.clone(),
            Some({
                let client = client.clone();
                Arc::new(move || client.budget_status())
            }),
        );
        state.sinks = sinks.as_ref().map(|s| s.stats.clone());
        state.events = Some(crate::api::EventsApi {
            stats: running.events.clone(),
            publisher: publish_waker.clone(),
        });
        state.set_basic_principals(&secrets.odata_basic);
        if !config.outbound_messages.is_empty() {
            let mut om = crate::api::outbound::OutboundService::from_config(
                config,
                &secrets.outbound_secrets,
                api_config.max_body_bytes.min(usize::MAX as u64) as usize,
            );
            om.wake = Some(running.appended.clone());
            state.outbound = Some(Arc::new(om));
            // The push channels are "up" while the endpoint listens (freshness).
            for f in &config.outbound_messages {
                running
                    .stats
                    .stream_up(&sfsync_pipeline::outbound::channel(&f.name), now_ms());
            }
            eprintln!(
                "Outbound Messages: {} flow(s) at POST /soap/outbound/<flow>/<secret>",
                config.outbound_messages.len()
            );
        }
        Arc::new(state)
    });
    let (api, api_state) = match (api, state) {
        (Some(bound), Some(state)) => {
            let running_api = bound.serve(state);
            let tls = config.api.as_ref().is_some_and(|a| a.tls.is_some());
            eprintln!(
                "API on {}://{} ({} tokens)",
                if tls { "https" } else { "http" },
                running_api.addr,
                secrets.api_tokens.len()
            );
            (Some(running_api), None)
        }
        (None, Some(state)) if matches!(service_api, ServiceApi::Shared { .. }) => {
            (None, Some(state))
        }
        _ => (None, None),
    };
    Ok(Service {
        running,
        api_addr: api.as_ref().map(|a| a.addr),
        api,
        wb_stop,
        deliverer,
        publisher,
        sinks,
        shutdown_timeout: Duration::from_secs(config.pipeline.shutdown_timeout_secs),
        api_state,
    })
}

/// What a `platform_event` sink needs: the store it enqueues into and the publisher to wake.
pub struct SinkEvents {
    pub store: Arc<dyn sfsync_store::Warehouse>,
    pub stats: Arc<sfsync_pipeline::events::EventStats>,
    pub publisher: Option<Arc<tokio::sync::Notify>>,
}

/// The transports of `[[sinks]]`: a bad URL or CA file stops the start with the sink named.
pub fn sink_specs(
    config: &ValidConfig,
    secrets: &ResolvedSecrets,
    events: &SinkEvents,
) -> Result<Vec<sfsync_pipeline::sinks::SinkSpec>> {
    use crate::config::SinkTarget;
    use sfsync_pipeline::sinks::{webhook, SinkSpec, Transport};
    let mut out = Vec::new();
    for (i, s) in config.sinks.iter().enumerate() {
        let transport: Arc<dyn Transport> = match &s.target {
            SinkTarget::PlatformEvent { event, fields } => {
                Arc::new(sfsync_pipeline::events::sink::RecordAppliedSink {
                    sink: s.name.clone(),
                    event: event.clone(),
                    fields: fields.clone(),
                    store: events.store.clone(),
                    stats: events.stats.clone(),
                    publisher: events.publisher.clone(),
                })
            }
            SinkTarget::Webhook {
                url,
                ca_file,
                timeout_secs,
                ..
            } => {
                let secret = secrets
                    .sink_secrets
                    .get(&s.name)
                    .with_context(|| format!("sinks[{i}] ({}): no signing secret", s.name))?;
                let ca_pem = match ca_file {
                    Some(p) => Some(std::fs::read(p).with_context(|| {
                        format!("sinks[{i}].ca_file: cannot read {}", p.display())
                    })?),
                    None => None,
                };
                Arc::new(
                    webhook::Webhook::new(webhook::WebhookConfig {
                        sink: s.name.clone(),
                        url: url.clone(),
                        secret: secret.expose().as_bytes().to_vec(),
                        timeout: Duration::from_secs(*timeout_secs),
                        ca_pem,
                        headers: Vec::new(),
                    })
                    .map_err(|e| anyhow::anyhow!("sinks[{i}] ({}): {e}", s.name))?,
                )
            }
            SinkTarget::Kafka {
                brokers,
                topic,
                partitions,
                replication_factor,
            } => Arc::new(
                sfsync_pipeline::sinks::kafka::KafkaSink::new(
                    sfsync_pipeline::sinks::kafka::KafkaSinkConfig {
                        sink: s.name.clone(),
                        kafka: sfsync_kafka::KafkaConfig::plaintext(brokers.clone()),
                        topic: topic.clone(),
                        partitions: u32::try_from(*partitions).unwrap_or(1),
                        replication_factor: u16::try_from(*replication_factor).unwrap_or(1),
                        delivery_timeout: Duration::from_secs(30),
                    },
                )
                .map_err(|e| anyhow::anyhow!("sinks[{i}] ({}): {e}", s.name))?,
            ),
        };
        out.push(SinkSpec {
            name: s.name.clone(),
            system: s.system.clone(),
            objects: s.objects.clone(),
            batch_max: s.batch_max,
            pii: s.pii,
            dead_letter_after: Duration::from_secs(s.dead_letter_after_secs),
            retry_base: Duration::from_millis(s.retry_base_ms),
            retry_max: Duration::from_secs(s.retry_max_secs),
            start: s.start,
            transport,
        });
    }
    Ok(out)
}

/// Starts the `[[sinks]]` of `config` (`None` without any).
fn start_sinks(
    config: &ValidConfig,
    secrets: &ResolvedSecrets,
    store: Arc<dyn sfsync_store::Warehouse>,
    ledger: Arc<dyn sfsync_store::WriteLedger>,
    events: &SinkEvents,
) -> Result<Option<sfsync_pipeline::sinks::RunningSinks>> {
    if config.sinks.is_empty() {
        return Ok(None);
    }
    let specs = sink_specs(config, secrets, events)?;
    for s in &specs {
        eprintln!(
            "Sink {}: {} {} for {} object(s)",
            s.name,
            s.transport.kind(),
            s.transport.target(),
            s.objects.len()
        );
    }
    Ok(Some(sfsync_pipeline::sinks::start(
        store,
        ledger,
        sfsync_pipeline::sinks::SinksConfig {
            sinks: specs,
            own_client: config.salesforce.client_id_header.clone(),
            echo_lookup: !config.writeback.objects.is_empty(),
            poll: Duration::from_millis(100),
            prune_every: Duration::from_secs(60),
        },
    )))
}

impl Service {
    /// Stops the API, then the deliverer (its round in flight finishes, within the shutdown
    /// timeout), then the pipeline with its final checkpoint.
    pub async fn stop(self) -> Result<()> {
        if let Some(api) = self.api {
            api.stop().await;
        }
        eprintln!("Stopping: committing the final checkpoint…");
        if let Some(sinks) = self.sinks {
            sinks.stop(self.shutdown_timeout).await;
        }
        let _ = self.wb_stop.send(true);
        if let Some(mut p) = self.publisher {
            // A Publish in flight finishes; its results are recorded before the task ends.
            if tokio::time::timeout(self.shutdown_timeout, &mut p)
                .await
                .is_err()
            {
                tracing::warn!("The platform-event publisher did not stop in time; its claimed events are taken again after the claim lease.");
                p.abort();
            }
        }
        if let Some(mut d) = self.deliverer {
            // A round in the middle of retry backoffs may take long: its writes stay `sent`
            // and are delivered again after the claim lease.
            let grace = self.shutdown_timeout;
            match tokio::time::timeout(grace, &mut d).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "The writeback deliverer task ended abnormally.")
                }
                Err(_) => {
                    tracing::warn!(grace_secs = grace.as_secs(), "Writeback delivery did not stop in time; its claimed writes are sent again after the claim lease.");
                    d.abort();
                }
            }
        }
        self.running.shutdown(self.shutdown_timeout).await?;
        Ok(())
    }
}

pub async fn run(args: RunArgs) -> Result<()> {
    // Signal handlers first: a SIGTERM during start-up is a graceful stop too.
    let signal = crate::emulator_cmd::shutdown_signal();
    tokio::pin!(signal);
    let mut early = false;
    tokio::select! {
        biased;
        _ = &mut signal => early = true,
        _ = std::future::ready(()) => {}
    }
    if early {
        return Ok(());
    }
    if crate::config::deployment::is_deployment_file(&args.config) {
        return crate::deploy_cmd::run(args, signal).await;
    }
    let (config, secrets) = load(&args.config).await?;
    let service = start_service(
        &config,
        &secrets,
        args.start,
        &args.config,
        args.role,
        ServiceApi::Own,
    )
    .await?;
    let stats = service.running.stats.clone();
    let started = Instant::now();
    let mut last = 0;
    let every = Duration::from_secs(args.progress_secs.max(1));
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    let mut stats_tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            _ = &mut signal => break,
            _ = tick.tick() => {
                if args.progress_secs > 0 {
                    eprintln!("{}", progress_line(&stats, started.elapsed(), &mut last));
                }
            }
            _ = stats_tick.tick(), if args.stats_file.is_some() => {
                if let Some(p) = &args.stats_file {
                    write_stats(p, &stats);
                }
            }
        }
    }
    service.stop().await?;
    eprintln!("{}", progress_line(&stats, started.elapsed(), &mut last));
    if let Some(p) = &args.stats_file {
        write_stats(p, &stats);
    }
    eprintln!("Stopped cleanly.");
    Ok(())
}
