//! The `kizuna` binary: `serve` (default), `migrate`, `bench`.

use anyhow::Context;
use clap::{Parser, Subcommand};
use kizuna::config::Settings;
use kizuna::startup::{self, Application};

#[derive(Parser)]
#[command(name = "kizuna", version, about = "Kizuna customer data platform")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the HTTP API (the default).
    Serve,
    /// Apply pending database migrations and exit.
    Migrate,
    /// Benchmarks (build with --release).
    #[command(subcommand)]
    Bench(kizuna::bench::BenchCommand),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let settings = Settings::load().context("loading configuration")?;
    kizuna::telemetry::init(&settings.log);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        match cli.command.unwrap_or(Command::Serve) {
            Command::Serve => {
                Application::build(settings)
                    .await?
                    .run_until_stopped()
                    .await
            }
            Command::Migrate => {
                let (url, embedded) = startup::resolve_database(&settings).await?;
                startup::prepare_database(&settings, &url).await?;
                drop(embedded);
                tracing::info!("migrations are up to date");
                Ok(())
            }
            Command::Bench(command) => kizuna::bench::run(command, settings).await,
        }
    })
}
