//! The `sfsync` binary: command-line interface and wiring. Business logic lives in the library
//! crates; this crate parses arguments, loads configuration and starts the right pieces.

mod emulator_cmd;

use clap::{Parser, Subcommand};

/// sfsync keeps Salesforce and the systems around it in agreement.
#[derive(Debug, Parser)]
#[command(name = "sfsync", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the Salesforce-compatible emulator (REST, SOAP login, OAuth, Bulk API 2.0, limits).
    Emulator(emulator_cmd::EmulatorArgs),
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

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_tracing();
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        match cli.command {
            Command::Emulator(args) => emulator_cmd::run(args).await,
        }
    })
}
