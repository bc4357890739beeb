//! `kizuna bench …`: load generators and baselines, measured in the same run.

pub mod ingest;

use clap::Subcommand;

use crate::config::Settings;

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Tracking API throughput against a PostgreSQL COPY of the same rows.
    Ingest(ingest::IngestBench),
}

pub async fn run(command: BenchCommand, settings: Settings) -> anyhow::Result<()> {
    match command {
        BenchCommand::Ingest(args) => ingest::run(args, settings).await,
    }
}
