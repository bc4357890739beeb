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
    limit_malloc_arenas();
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

/// glibc gives threads up to 8 malloc arenas a core, and each keeps what it freed: the scratch
/// memory of a large query (built on a blocking thread, freed there) then stays resident. One
/// arena a core bounds that (an export right after a snapshot load grew the process by 202 MB
/// with the default, 86 MB with it; BENCHMARKS.md). `MALLOC_ARENA_MAX`, when set, still wins.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        // SAFETY: called first thing in `main`, before any other thread exists or allocates.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, cores as libc::c_int);
        }
    }
}
