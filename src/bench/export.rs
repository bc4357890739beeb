//! `kizuna bench export`: seeds N profiles (as `bench segments` does), loads the snapshot, then
//! times a Parquet export of every profile over HTTP (`GET /v1/exports/profiles?format=parquet`)
//! while watching the server's resident memory: the growth over the export is the peak (VmHWM,
//! reset through /proc/self/clear_refs, and sampled VmRSS) minus the resident size before it.
//! The client writes the body to a temporary file and reads the row count back from its footer.

use std::time::{Duration, Instant};

use clap::Args;
use tokio::io::AsyncWriteExt;

use super::BenchDatabase;
use crate::config::Settings;
use crate::startup::Application;

#[derive(Args, Debug)]
pub struct ExportBench {
    #[arg(long, default_value_t = 1_000_000)]
    pub profiles: i64,
    /// Events seeded beside the profiles (at least 1).
    #[arg(long, default_value_t = 1_000)]
    pub events: i64,
    /// `parquet` (the benchmark), `csv` or `ndjson`.
    #[arg(long, default_value = "parquet")]
    pub format: String,
    /// Columns to export (`fields=`); all of them when absent.
    #[arg(long)]
    pub fields: Option<String>,
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432")]
    pub server: String,
    #[arg(long)]
    pub keep: bool,
}

/// A `/proc/self/status` figure in MB (`VmRSS`, `VmHWM`).
fn status_mb(key: &str) -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

pub async fn run(args: ExportBench, settings: Settings) -> anyhow::Result<()> {
    let mut bench = BenchDatabase::create(&args.server, "export", settings).await?;
    bench.settings.query.schedule_every_secs = 0;
    bench.settings.exports.schedules.clear();
    let token = bench.settings.auth.admin_token.clone();
    let app = Application::build(bench.settings.clone()).await?;
    let state = app.state();
    let address = app.address();
    let handle = app.handle();
    let server = tokio::spawn(app.run_until_stopped());

    eprintln!("seeding {} profiles…", args.profiles);
    let started = Instant::now();
    super::segments::seed(&state.db, args.profiles, args.events.max(1)).await?;
    let seed_secs = started.elapsed().as_secs_f64();
    let started = Instant::now();
    state.query.refresh().await?;
    let load_secs = started.elapsed().as_secs_f64();

    println!(
        "kizuna bench export: {} profiles (seeded in {seed_secs:.0} s, snapshot loaded in {load_secs:.1} s)",
        args.profiles
    );
    // The first export after a snapshot load also computes the customer-health built-ins, which
    // are then cached on the snapshot view (shared with segments and the health report); the
    // second shows what an export itself costs.
    for pass in ["first after the snapshot load", "again (built-ins cached)"] {
        println!("  {pass}:");
        let path = std::env::temp_dir().join(format!(
            "kizuna-bench-export-{}.parquet",
            uuid::Uuid::new_v4().simple()
        ));
        // Peak tracking: reset the high-water mark (Linux 4.0+), and sample VmRSS as a fallback.
        let hwm_reset = std::fs::write("/proc/self/clear_refs", "5").is_ok();
        let before = status_mb("VmRSS:");
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let sampler = tokio::spawn(async move {
            let mut peak = 0f64;
            loop {
                peak = peak.max(status_mb("VmRSS:"));
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(5)) => {}
                    _ = stopped.changed() => return peak.max(status_mb("VmRSS:")),
                }
            }
        });

        let client = reqwest::Client::new();
        let started = Instant::now();
        let mut response = client
            .get(format!(
                "http://{address}/v1/exports/profiles?format={}{}",
                args.format,
                args.fields
                    .as_deref()
                    .map(|f| format!("&fields={}", urlencoding::encode(f)))
                    .unwrap_or_default()
            ))
            .bearer_auth(&token)
            .send()
            .await?;
        anyhow::ensure!(
            response.status() == 200,
            "the export answered {}: {}",
            response.status(),
            response.text().await.unwrap_or_default()
        );
        let mut file = tokio::fs::File::create(&path).await?;
        let mut first_byte = None;
        let mut bytes = 0usize;
        while let Some(chunk) = response.chunk().await? {
            first_byte.get_or_insert_with(|| started.elapsed());
            bytes += chunk.len();
            file.write_all(&chunk).await?;
        }
        file.flush().await?;
        let export_secs = started.elapsed().as_secs_f64();
        let _ = stop.send(true);
        let sampled_peak = sampler.await?;
        let hwm = status_mb("VmHWM:");
        let peak = if hwm_reset {
            hwm.max(sampled_peak)
        } else {
            sampled_peak
        };
        let growth = peak - before;

        let rows = if args.format != "parquet" {
            args.profiles
        } else {
            let file = std::fs::File::open(&path)?;
            let reader =
                datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
                    file,
                )?;
            reader.metadata().file_metadata().num_rows()
        };
        let _ = std::fs::remove_file(&path);
        println!(
            "  {:<8} export over HTTP {export_secs:>8.2} s   ({rows} rows, {:.1} MB; target < 5 s at 1M)",
            args.format,
            bytes as f64 / 1e6
        );
        println!(
            "  first byte after          {:>8.0} ms",
            first_byte.unwrap_or_default().as_secs_f64() * 1e3
        );
        println!(
            "  resident memory growth    {growth:>8.0} MB  (before {before:.0} MB, peak {peak:.0} MB{}; target < 200 MB)",
            if hwm_reset { ", VmHWM" } else { ", sampled VmRSS" }
        );
        anyhow::ensure!(
            rows == args.profiles,
            "the export held {rows} rows, expected {}",
            args.profiles
        );
    }

    handle.stop(true).await;
    server.await??;
    bench.finish(args.keep).await
}
