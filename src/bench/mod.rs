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

/// The whole machine's CPU time (every process: load generator, server, PostgreSQL), read from
/// `/proc/stat` at the start of a phase; `used` gives what the phase cost. On a machine whose
/// processes all serve the benchmark, busy core-seconds per event is the cost of an event
/// whatever the scheduling, so phases measured apart can be added up.
pub struct CpuMeter {
    busy: f64,
    steal: f64,
    at: std::time::Instant,
}

/// What a phase cost the machine.
#[derive(Debug, Clone, Copy)]
pub struct CpuUsed {
    /// Busy core-seconds (user, nice, system, irq, softirq).
    pub busy_secs: f64,
    /// Core-seconds the hypervisor gave to other machines.
    pub steal_secs: f64,
    pub wall_secs: f64,
}

impl CpuMeter {
    pub fn start() -> Self {
        let (busy, steal) = machine_cpu();
        CpuMeter {
            busy,
            steal,
            at: std::time::Instant::now(),
        }
    }

    pub fn used(&self) -> CpuUsed {
        let (busy, steal) = machine_cpu();
        CpuUsed {
            busy_secs: busy - self.busy,
            steal_secs: steal - self.steal,
            wall_secs: self.at.elapsed().as_secs_f64(),
        }
    }
}

impl CpuUsed {
    /// Busy core-microseconds a unit of work (`units` events or rows).
    pub fn micros_each(&self, units: usize) -> f64 {
        self.busy_secs * 1e6 / units.max(1) as f64
    }

    /// "N core-µs each (B of C cores busy, S % steal)".
    pub fn describe(&self, units: usize) -> String {
        let wall = self.wall_secs.max(1e-9);
        format!(
            "{:.0} core-µs each ({:.2} of {} cores busy, {:.0} % steal)",
            self.micros_each(units),
            self.busy_secs / wall,
            cores(),
            100.0 * self.steal_secs / (wall * cores() as f64)
        )
    }
}

pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// (busy, steal) core-seconds since boot, from the first line of `/proc/stat` (zeros where
/// there is none).
fn machine_cpu() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: Vec<f64> = stat
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap_or(0.0))
        .collect();
    let at = |i: usize| ticks.get(i).copied().unwrap_or(0.0);
    // user nice system idle iowait irq softirq steal …, in clock ticks
    let hz = match unsafe { libc::sysconf(libc::_SC_CLK_TCK) } {
        n if n > 0 => n as f64,
        _ => 100.0,
    };
    ((at(0) + at(1) + at(2) + at(5) + at(6)) / hz, at(7) / hz)
}
