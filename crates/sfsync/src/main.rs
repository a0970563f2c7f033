//! The `sfsync` binary: command-line interface and wiring. Business logic lives in the library
//! crates; this crate parses arguments, loads configuration and starts the right pieces.

mod admin_cmd;
mod api;
mod bench_archive;
mod bench_kafka;
mod bench_odata;
mod bench_pipeline;
mod bench_poll;
mod bench_pubsub;
mod bench_salesforce;
mod bench_sinks;
mod bench_sync;
mod bench_writeback;
mod config;
mod demo;
mod deploy_cmd;
mod emulator_cmd;
mod jobs_cmd;
mod kms_cmd;
mod map_cmd;
mod quarantine_cmd;
mod run_cmd;
mod sync_status_cmd;
mod writes_cmd;
mod writes_ops;

use clap::{Parser, Subcommand};

/// mimalloc instead of glibc malloc: under many concurrent requests glibc's arenas showed up as
/// ~18 % of CPU in the REST benchmark (malloc/free/consolidate); mimalloc's thread-local heaps
/// avoid that contention.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// sfsync keeps Salesforce and the systems around it in agreement.
#[derive(Debug, Parser)]
#[command(name = "sfsync", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the pipeline: Salesforce CDC into the warehouse, until SIGTERM (`run --config FILE`).
    Run(run_cmd::RunArgs),
    /// Run the Salesforce-compatible emulator (REST, SOAP login, OAuth, Bulk API 2.0, limits).
    Emulator(emulator_cmd::EmulatorArgs),
    /// The demo: embedded emulator, workload-shaped traffic, the sfsync client reading it, live figures.
    Demo(demo::DemoArgs),
    /// Run a benchmark suite: print a table and write a JSON report.
    Bench(BenchArgs),
    /// Work with the config file (`config check --config FILE`).
    Config(config::check::ConfigArgs),
    /// Check the warehouse's audit hash chain (`audit verify --config FILE`; exit 1 when broken).
    Audit(admin_cmd::AuditArgs),
    /// Manage the PII keys (`keys rotate --config FILE`: re-seal all PII under the current key;
    /// `keys kms-generate` / `keys kms-rewrap`: data keys wrapped by AWS KMS).
    Keys(admin_cmd::KeysArgs),
    /// Print an object's rows or history from the warehouse, PII masked unless `--decrypt`.
    Read(admin_cmd::ReadArgs),
    /// Changes the data-quality gates hold: `list`, `show ID`, `release ID…`, `discard ID…`.
    Quarantine(quarantine_cmd::QuarantineArgs),
    /// Writeback's conflict queue: `list`, `show ID`, `resolve ID --keep-salesforce |
    /// --take-writer | --set FIELD=VALUE…`.
    Conflicts(writes_cmd::ConflictsArgs),
    /// Dead letters (writes Salesforce refused, events that could not be applied): `list`,
    /// `show ID`, `redrive ID…`, `discard ID…`.
    Deadletters(writes_cmd::DeadLettersArgs),
    /// Data-quality failure counts per object and rule (`quality report --config FILE`).
    Quality(quarantine_cmd::QualityArgs),
    /// Load objects through Bulk API 2.0 while streaming continues (`backfill --config FILE
    /// Account [--since 72h]`), with a progress bar; resumable.
    Backfill(jobs_cmd::BackfillArgs),
    /// Compare the warehouse with Salesforce and re-read what differs (`reconcile --config
    /// FILE [OBJECT…]`).
    Reconcile(jobs_cmd::ReconcileArgs),
    /// Re-apply changes to the curated tables, from the raw change log where retained and from
    /// Salesforce otherwise (`replay --config FILE [OBJECT…] --since 72h [--until T]` |
    /// `--from-replay-id HEX --channel CHANNEL` | `--ids ID,…`), with a progress bar.
    Replay(jobs_cmd::ReplayArgs),
    /// Compact the applied raw change log into the Parquet archive now (`archive --config
    /// FILE`); `sfsync run` does it every `archive.every_secs`. The hot log is pruned past its
    /// retention only once archived and verified.
    Archive(jobs_cmd::ArchiveArgs),
    /// Delete archive partitions, audit entries and hot-log entries past their retention
    /// (`retention --config FILE [--dry-run [--json]]`); `sfsync run` does it daily.
    Retention(jobs_cmd::RetentionArgs),
    /// The integration map drawn from the config: every flow's source, target, direction,
    /// frequency, trigger, transformation, SLA and team (`map --config FILE [--format
    /// mermaid|dot|json]`).
    Map(map_cmd::MapArgs),
    /// Runs of sync jobs (backfills, re-syncs, reconciliations, replays): `list`, `show ID`,
    /// `cancel ID…`, `retry ID…` (`sfsync jobs` is the same command).
    #[command(alias = "jobs")]
    Runs(jobs_cmd::JobsArgs),
    /// The freshness contract from the warehouse's `sync_status` view, per object
    /// (`sync-status --config FILE [--object NAME] [--json]`); exit 0 when every object is
    /// current, 3 when one is delayed, 4 when one is partial — gate downstream jobs on it.
    SyncStatus(sync_status_cmd::SyncStatusArgs),
}

#[derive(Debug, clap::Args)]
struct BenchArgs {
    /// Which suite to run.
    #[arg(value_enum, default_value_t = BenchSuite::Salesforce)]
    suite: BenchSuite,
    /// Write the JSON report here.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
    /// Salesforce suite: Accounts seeded and exported by Bulk query.
    #[arg(long, default_value_t = 1_000_000)]
    accounts: usize,
    /// Salesforce suite: seconds of REST GETs.
    #[arg(long, default_value_t = 10)]
    rest_secs: u64,
    /// Salesforce suite: concurrent REST callers.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Salesforce suite: records upserted by Bulk ingest.
    #[arg(long, default_value_t = 100_000)]
    upserts: usize,
    /// Pub/Sub suite: change events pre-committed and subscribed to. Archive suite: raw-log
    /// rows archived. Sinks suite: changes delivered per batch size.
    #[arg(long, default_value_t = 200_000)]
    events: usize,
    /// Pipeline suite: Case change events committed before the pipeline starts.
    #[arg(long, default_value_t = 100_000)]
    backlog: usize,
    /// Pipeline suite: seconds of offered load at each rate (2,000/s and 20,000/s).
    #[arg(long, default_value_t = 15)]
    load_secs: u64,
    /// Sync suite: Accounts backfilled and reconciled.
    #[arg(long, default_value_t = 1_000_000)]
    records: usize,
    /// Sync suite: run the emulator inside the bench process (by default it is a separate
    /// `sfsync emulator` process, so the CPU figure is sfsync's alone).
    #[arg(long)]
    in_process_emulator: bool,
    /// Sync suite: share (0–100) of the seeded Accounts whose 2–6 KB Description is filled; the
    /// others leave it null (a few hundred bytes per record instead of several KB).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u8).range(0..=100))]
    long_text_percent: u8,
    /// Writeback suite: Cases seeded and backfilled before the writes.
    #[arg(long, default_value_t = 20_000)]
    cases: usize,
    /// Writeback suite: writes submitted per second.
    #[arg(long, default_value_t = 500)]
    writeback_rate: u64,
    /// Writeback suite: seconds of sustained writes.
    #[arg(long, default_value_t = 600)]
    writeback_secs: u64,
    /// OData suite: rows of the entity set.
    #[arg(long, default_value_t = 10_000)]
    odata_rows: usize,
    /// Pipeline suite: also measure a Postgres warehouse at this URL (a throwaway schema).
    #[arg(long, env = "SFSYNC_BENCH_POSTGRES_URL")]
    postgres_url: Option<String>,
    /// Poll suite: changes committed (60 % creates, 40 % updates of Accounts and Cases).
    #[arg(long, default_value_t = 100_000)]
    changes: usize,
    /// Poll suite: `poll_bulk_threshold` of the Bulk way.
    #[arg(long, default_value_t = 2_000)]
    bulk_threshold: u64,
    /// Kafka suite: the broker(s) (`scripts/bench-kafka` starts a throwaway one).
    #[arg(long, env = "SFSYNC_BENCH_BROKERS")]
    brokers: Option<String>,
    /// Kafka suite: the apply worker counts to measure, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    workers: Vec<usize>,
    /// Kafka suite: partitions of the raw-log topic.
    #[arg(long, default_value_t = 8)]
    partitions: u32,
    /// Kafka suite: offered load of the latency phase, changes per second (the design point's
    /// peak is 2,000/s).
    #[arg(long, default_value_t = 2_000.0)]
    rate: f64,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum BenchSuite {
    /// REST GETs/s, Bulk 2.0 export, Bulk ingest upserts (issue: the HTTP side).
    Salesforce,
    /// CDC Avro decode rate (1 KB / 5 KB events) and end-to-end Pub/Sub subscribe rate.
    Pubsub,
    /// The exactly-once pipeline: end-to-end events/s, CPU/event, latency at 2k and 20k/s, RSS.
    Pipeline,
    /// Backfill of N Accounts (records/s, API calls) and reconciliation in sync and with 0.1 %
    /// drift (seconds, API calls).
    Sync,
    /// Writeback to Salesforce at a sustained rate: accepted→applied/confirmed p50/p99, records
    /// per API call, over-limit responses.
    Writeback,
    /// The Parquet archive of the raw change log: events/s and MB/s archived (with read-back
    /// verification), compression ratio, bytes per event, projected storage per day.
    Archive,
    /// Webhook delivery from the delivery outbox to a local receiver: changes/s, requests/s,
    /// MB/s and CPU per change at three batch sizes.
    Sinks,
    /// The scale-out pipeline: ingest → Kafka → 1 and 2 apply workers → Postgres; events/s,
    /// CPU per event per process, latency and consumer lag at 2,000 changes/s.
    Kafka,
    /// One workload of Account and Case changes synced three ways — CDC, polling through REST,
    /// polling through Bulk 2.0: changes/s to convergence, API calls per 10,000 changes, CPU.
    Poll,
    /// OData page latency (p50/p99) paging a 10,000-row entity set by @odata.nextLink at the
    /// default page size, with and without $filter.
    Odata,
}

async fn bench(args: BenchArgs) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let report = match args.suite {
        BenchSuite::Salesforce => {
            bench_salesforce::run(bench_salesforce::SalesforceBenchOptions {
                accounts: args.accounts,
                rest_secs: args.rest_secs,
                concurrency: args.concurrency,
                upserts: args.upserts,
            })
            .await?
        }
        BenchSuite::Pipeline => {
            bench_pipeline::run(bench_pipeline::PipelineBenchOptions {
                backlog: args.backlog,
                load_secs: args.load_secs,
                postgres_url: args.postgres_url,
            })
            .await?
        }
        BenchSuite::Kafka => {
            bench_kafka::run(bench_kafka::KafkaBenchOptions {
                brokers: args
                    .brokers
                    .context("the kafka suite needs --brokers (or SFSYNC_BENCH_BROKERS)")?,
                postgres_url: args.postgres_url.context(
                    "the kafka suite needs --postgres-url (or SFSYNC_BENCH_POSTGRES_URL)",
                )?,
                backlog: args.backlog,
                load_secs: args.load_secs,
                workers: args.workers,
                partitions: args.partitions,
                rate: args.rate,
            })
            .await?
        }
        BenchSuite::Sync => {
            bench_sync::run(bench_sync::SyncBenchOptions {
                records: args.records,
                in_process_emulator: args.in_process_emulator,
                long_text_percent: args.long_text_percent,
            })
            .await?
        }
        BenchSuite::Writeback => {
            bench_writeback::run(bench_writeback::WritebackBenchOptions {
                cases: args.cases,
                rate: args.writeback_rate,
                secs: args.writeback_secs,
            })
            .await?
        }
        BenchSuite::Archive => {
            bench_archive::run(bench_archive::ArchiveBenchOptions {
                events: args.events,
            })
            .await?
        }
        BenchSuite::Odata => {
            bench_odata::run(bench_odata::OdataBenchOptions {
                rows: args.odata_rows,
                passes: 5,
            })
            .await?
        }
        BenchSuite::Poll => {
            bench_poll::run(bench_poll::PollBenchOptions {
                changes: args.changes,
                bulk_threshold: args.bulk_threshold,
            })
            .await?
        }
        BenchSuite::Sinks => {
            bench_sinks::run(bench_sinks::SinksBenchOptions {
                events: args.events,
            })
            .await?
        }
        BenchSuite::Pubsub => {
            bench_pubsub::run(bench_pubsub::PubsubBenchOptions {
                events: args.events,
                ..Default::default()
            })
            .await?
        }
    };
    if let Some(path) = args.json {
        std::fs::write(&path, serde_json::to_string_pretty(&report)?)?;
        println!("JSON report written to {}", path.display());
    }
    Ok(())
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("SFSYNC_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_writer(std::io::stderr)
        .init();
}

/// Turns transparent huge pages off for this process (and the emulator it may start). Our
/// allocations churn (multi-megabyte Bulk result batches, curated batches handed between
/// threads), and with THP every fresh 2 MiB page is zeroed by the kernel on first touch:
/// measured on `bench sync` (100k Accounts, 4 interleaved runs), backfill 14.3k against 11.3k
/// records/s and sfsync CPU 71 against 82 µs per record; pipeline RSS lower too.
fn disable_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    {
        extern "C" {
            fn prctl(option: i32, arg2: u64, arg3: u64, arg4: u64, arg5: u64) -> i32;
        }
        const PR_SET_THP_DISABLE: i32 = 41;
        // SAFETY: prctl(PR_SET_THP_DISABLE, 1) only sets a flag on this process; on failure
        // (old kernel) nothing changes and THP stays as the system configures it.
        let _ = unsafe { prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    }
}

fn main() -> anyhow::Result<()> {
    disable_transparent_huge_pages();
    let cli = Cli::parse();
    // Before any command: the config step may call AWS (Secrets Manager, KMS) over rustls.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    if let Command::Config(args) = cli.command {
        std::process::exit(config::check::run(args));
    }
    init_tracing();
    let command = match cli.command {
        Command::Audit(args) => std::process::exit(admin_cmd::audit(args)),
        Command::Keys(args) => std::process::exit(admin_cmd::keys(args)),
        Command::Read(args) => std::process::exit(admin_cmd::read(args)),
        Command::Quarantine(args) => std::process::exit(quarantine_cmd::quarantine(args)),
        Command::Quality(args) => std::process::exit(quarantine_cmd::quality(args)),
        Command::Map(args) => std::process::exit(map_cmd::map(args)),
        Command::Conflicts(args) => std::process::exit(writes_cmd::conflicts(args)),
        Command::Deadletters(args) => std::process::exit(writes_cmd::deadletters(args)),
        Command::SyncStatus(args) => std::process::exit(sync_status_cmd::run(args)),
        command => command,
    };
    // The pipeline's blocking work is its database connections (one writer, one reader, a few
    // Postgres calls): a small pool is enough, and every idle pool thread keeps its own
    // allocator heap (measured on `bench pipeline`: peak RSS 480–560 MB with the default 512
    // threads, of which 32 were started; 270–330 MB with 4). The emulator keeps the default.
    let blocking_threads = match &command {
        Command::Run(_) => 4,
        Command::Demo(_) => 8,
        _ => 512,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(blocking_threads)
        .build()?;
    runtime.block_on(async move {
        match command {
            Command::Emulator(args) => emulator_cmd::run(args).await,
            Command::Run(args) => run_cmd::run(args).await,
            Command::Bench(args) => bench(args).await,
            Command::Demo(args) => demo::run(args).await,
            Command::Backfill(args) => std::process::exit(admin_cmd::finish(
                "backfill",
                jobs_cmd::backfill(args).await,
            )),
            Command::Reconcile(args) => std::process::exit(admin_cmd::finish(
                "reconcile",
                jobs_cmd::reconcile(args).await,
            )),
            Command::Archive(args) => {
                std::process::exit(admin_cmd::finish("archive", jobs_cmd::archive(args).await))
            }
            Command::Retention(args) => std::process::exit(admin_cmd::finish(
                "retention",
                jobs_cmd::retention(args).await,
            )),
            Command::Replay(args) => {
                std::process::exit(admin_cmd::finish("replay", jobs_cmd::replay(args).await))
            }
            Command::Runs(args) => {
                std::process::exit(admin_cmd::finish("runs", jobs_cmd::jobs(args).await))
            }
            Command::Config(_)
            | Command::Audit(_)
            | Command::Keys(_)
            | Command::Read(_)
            | Command::Quarantine(_)
            | Command::Quality(_)
            | Command::Map(_)
            | Command::Conflicts(_)
            | Command::Deadletters(_)
            | Command::SyncStatus(_) => {
                unreachable!("handled before the runtime starts")
            }
        }
    })
}
