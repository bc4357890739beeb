//! `kizuna bench …`: load generators and baselines, measured in the same run against a Kizuna
//! server running in this process on a fresh database of its own.

pub mod export;
pub mod health;
pub mod ingest;
pub mod lookup;
pub mod segments;

use chrono::Utc;
use clap::Subcommand;

use crate::config::Settings;

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Tracking API throughput against a PostgreSQL COPY of the same rows, and freshness.
    Ingest(ingest::IngestBench),
    /// Profile lookups by identifier at 1,000,000 profiles.
    Lookup(lookup::LookupBench),
    /// Segment evaluation at 1,000,000 profiles and 10,000,000 events, beside DuckDB.
    Segments(segments::SegmentsBench),
    /// Parquet export of every profile over HTTP, timed, with the server's memory growth.
    Export(export::ExportBench),
    /// The customer-health report at 1,000,000 profiles.
    Health(health::HealthBench),
}

pub async fn run(command: BenchCommand, settings: Settings) -> anyhow::Result<()> {
    match command {
        BenchCommand::Ingest(args) => ingest::run(args, settings).await,
        BenchCommand::Lookup(args) => lookup::run(args, settings).await,
        BenchCommand::Segments(args) => segments::run(args, settings).await,
        BenchCommand::Export(args) => export::run(args, settings).await,
        BenchCommand::Health(args) => health::run(args, settings).await,
    }
}

/// A database made for one benchmark run, and the settings that point at it.
pub struct BenchDatabase {
    pub settings: Settings,
    server: String,
    name: String,
}

impl BenchDatabase {
    pub async fn create(server: &str, what: &str, mut settings: Settings) -> anyhow::Result<Self> {
        let name = format!("kizuna_bench_{what}_{}", Utc::now().format("%Y%m%d%H%M%S"));
        settings.database.url = format!("{}/{name}", server.trim_end_matches('/'));
        settings.server.bind = "127.0.0.1:0".into();
        settings.auth.admin_token = crate::auth::new_secret("bench_");
        Ok(BenchDatabase {
            settings,
            server: server.to_string(),
            name,
        })
    }

    /// Drops the database unless asked to keep it.
    pub async fn finish(self, keep: bool) -> anyhow::Result<()> {
        if keep {
            eprintln!("kept database {}", self.name);
            return Ok(());
        }
        let mut admin: tokio_postgres::Config = self.server.parse()?;
        admin.dbname("postgres");
        let (client, conn) = admin.connect(tokio_postgres::NoTls).await?;
        tokio::spawn(conn);
        client
            .batch_execute(&format!(
                "DROP DATABASE {} WITH (FORCE)",
                crate::db::quote_ident(&self.name)
            ))
            .await?;
        Ok(())
    }
}
