//! `kizuna bench segments`: seeds N profiles and M events straight into a fresh database, loads
//! the columnar snapshot, and times segment evaluation (trait, behavioural, 20 mixed), an
//! incremental refresh after 10,000 new events, and the snapshot's resident memory. Then the same
//! behavioural segment runs as SQL in DuckDB over the same events exported to Parquet.

use std::time::Instant;

use chrono::Utc;
use clap::Args;
use serde_json::{json, Value};

use super::BenchDatabase;
use crate::config::Settings;
use crate::segments::{self, definition::Condition, Definitions};
use crate::startup::Application;

#[derive(Args, Debug)]
pub struct SegmentsBench {
    #[arg(long, default_value_t = 1_000_000)]
    pub profiles: i64,
    #[arg(long, default_value_t = 10_000_000)]
    pub events: i64,
    /// Skip the DuckDB comparison.
    #[arg(long)]
    pub no_duckdb: bool,
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432")]
    pub server: String,
    #[arg(long)]
    pub keep: bool,
}

fn rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

pub async fn run(args: SegmentsBench, settings: Settings) -> anyhow::Result<()> {
    let mut bench = BenchDatabase::create(&args.server, "segments", settings).await?;
    bench.settings.query.schedule_every_secs = 0;
    let app = Application::build(bench.settings.clone()).await?;
    let state = app.state();
    let handle = app.handle();
    let server = tokio::spawn(app.run_until_stopped());
    let db = state.db.clone();

    let started = Instant::now();
    seed(&db, args.profiles, args.events).await?;
    let seed_secs = started.elapsed().as_secs_f64();

    let engine = &state.query;
    let rss_before = rss_mb();
    let started = Instant::now();
    engine.refresh().await?;
    let load_secs = started.elapsed().as_secs_f64();
    let rss_after = rss_mb();

    let all = Definitions::default();
    let time = |definition: Value| {
        let all = &all;
        async move {
            let condition = Condition::parse(&definition).map_err(|e| anyhow::anyhow!("{e}"))?;
            let mut best = f64::MAX;
            let mut members = 0;
            for _ in 0..3 {
                let started = Instant::now();
                members = segments::matching(engine, &condition, all).await?.len();
                best = best.min(started.elapsed().as_secs_f64() * 1e3);
            }
            Ok::<_, anyhow::Error>((best, members))
        }
    };
    let trait_def = json!({"trait": "plan", "op": "eq", "value": "pro"});
    let count_def =
        json!({"event": "Order Completed", "within": "90d", "count": {"op": "gte", "value": 3}});
    let sum_def = json!({"event": "Order Completed", "within": "90d", "sum": {"property": "revenue", "op": "gte", "value": 500}});
    let (trait_ms, trait_n) = time(trait_def).await?;
    let (count_ms, count_n) = time(count_def).await?;
    let (sum_ms, sum_n) = time(sum_def).await?;

    const BROWSING: [&str; 3] = ["Product Viewed", "Cart Viewed", "Page Viewed"];
    let mixed: Vec<Value> = (0..20)
        .map(|i| match i % 4 {
            0 => json!({"trait": "age", "op": "between", "value": [20 + i, 40 + i]}),
            1 => json!({"event": BROWSING[i % 3], "within": format!("{}d", 7 * (i + 1)), "count": {"op": "gte", "value": 2}}),
            2 => json!({"all": [{"trait": "country", "op": "eq", "value": "DE"}, {"not": {"event": "Order Completed", "within": "30d"}}]}),
            _ => json!({"event": "Order Completed", "within": "180d", "where": {"property": "currency", "op": "eq", "value": "EUR"}, "count": {"op": "gte", "value": 1}}),
        })
        .collect();
    let started = Instant::now();
    for definition in &mixed {
        let condition = Condition::parse(definition).map_err(|e| anyhow::anyhow!("{e}"))?;
        segments::matching(engine, &condition, &all).await?;
    }
    let mixed_secs = started.elapsed().as_secs_f64();

    // 10,000 new resolved events, then an incremental refresh.
    seed_late_orders(&db, args.profiles).await?;
    let started = Instant::now();
    let refreshed = engine.refresh().await?;
    let refresh_ms = started.elapsed().as_secs_f64() * 1e3;

    println!(
        "kizuna bench segments: {} profiles, {} events (seeded in {seed_secs:.0} s)",
        args.profiles, args.events
    );
    println!("  snapshot load        {load_secs:>8.1} s, resident memory +{:.0} MB (process {rss_after:.0} MB)", rss_after - rss_before);
    println!("  trait segment        {trait_ms:>8.0} ms  ({trait_n} members; target < 100 ms)");
    println!("  count in 90 days     {count_ms:>8.0} ms  ({count_n} members; target < 1000 ms)");
    println!("  sum in 90 days       {sum_ms:>8.0} ms  ({sum_n} members; target < 1000 ms)");
    println!("  20 mixed segments    {mixed_secs:>8.1} s   (target < 10 s)");
    println!(
        "  refresh after {} new events {refresh_ms:.0} ms (target < 500 ms)",
        refreshed.events_added
    );

    if !args.no_duckdb {
        // Same data on both sides: time Kizuna again now that the late events are in.
        let count_def = json!({"event": "Order Completed", "within": "90d", "count": {"op": "gte", "value": 3}});
        let (ms, n) = time(count_def).await?;
        println!("  count in 90 days, again after the refresh: {ms:.0} ms ({n} members)");
        duckdb_side_by_side(engine, ms).await?;
    }

    handle.stop(true).await;
    server.await??;
    bench.finish(args.keep).await
}

/// 10,000 new resolved `Order Completed` events spread over the seeded profiles, stamped now:
/// what an incremental refresh then has to pick up.
pub async fn seed_late_orders(db: &crate::db::Db, profiles: i64) -> anyhow::Result<()> {
    db.conn()
        .await?
        .execute(
            "WITH stored AS (
                 INSERT INTO events (source_id, message_id, type, event, ts, received_at, properties)
                 SELECT '00000000-0000-7000-8000-000000000001', 'late-' || g, 'track', 'Order Completed',
                        now(), now(), '{\"revenue\": 10, \"currency\": \"EUR\"}'
                 FROM generate_series(1, 10000) g
                 RETURNING seq, ts)
             INSERT INTO event_profiles (seq, ts, profile_id, resolved_seq)
             SELECT seq, ts, ('00000000-0000-7000-8000-' || lpad(to_hex(1 + seq % $1::int8), 12, '0'))::uuid,
                    nextval('event_resolutions')
             FROM stored",
            &[&profiles],
        )
        .await?;
    Ok(())
}

/// Seeds `profiles` profiles (with a `user_id` each and traits plan, country, age, vip) and
/// `events` resolved track events (seq 1..=events; a fifth of them `Order Completed` with a
/// revenue and currency) straight into the database, bypassing ingest.
pub async fn seed(db: &crate::db::Db, profiles: i64, events: i64) -> anyhow::Result<()> {
    eprintln!("seeding {} profiles and {} events…", profiles, events);
    let client = db.conn().await?;
    client
        .batch_execute(&format!(
            "INSERT INTO sources (id, name, kind, write_key_hash, write_key_hint)
               VALUES ('00000000-0000-7000-8000-000000000001', 'seed', 'web', '\\x00', 'seed');
             INSERT INTO profiles (id, traits, first_seen, last_seen, event_count)
               SELECT ('00000000-0000-7000-8000-' || lpad(to_hex(g), 12, '0'))::uuid,
                      jsonb_build_object('plan', (ARRAY['free','plus','pro'])[1 + g % 3],
                                         'country', (ARRAY['GB','DE','FR','JP','US'])[1 + g % 5],
                                         'age', 18 + g % 60, 'vip', g % 50 = 0),
                      now() - interval '365 days', now(), {per}
               FROM generate_series(1, {p}) g;
             INSERT INTO identities (kind, value, profile_id, source_id, first_seen)
               SELECT 'user_id', 'user-' || g, ('00000000-0000-7000-8000-' || lpad(to_hex(g), 12, '0'))::uuid,
                      '00000000-0000-7000-8000-000000000001', now() - interval '365 days'
               FROM generate_series(1, {p}) g;",
            p = profiles,
            per = events / profiles.max(1),
        ))
        .await?;
    let chunk = 1_000_000;
    let mut from = 0;
    while from < events {
        let to = (from + chunk).min(events);
        client
            .execute(
                "INSERT INTO events (seq, source_id, message_id, type, event, ts, received_at, properties)
                 SELECT g, '00000000-0000-7000-8000-000000000001', 'seed-' || g, 'track',
                        (ARRAY['Order Completed','Product Viewed','Product Viewed','Page Viewed','Cart Viewed'])[1 + (g * 7) % 5],
                        now() - ((g * 40503) % 31536000) * interval '1 second', now(),
                        jsonb_build_object('revenue', round(((g * 13) % 20000) / 100.0, 2),
                                           'currency', (ARRAY['EUR','USD','GBP'])[1 + g % 3])
                 FROM generate_series($1::int8, $2::int8) g",
                &[&(from + 1), &to],
            )
            .await?;
        client
            .execute(
                "INSERT INTO event_profiles (seq, ts, profile_id, resolved_seq)
                 SELECT seq, ts, ('00000000-0000-7000-8000-' || lpad(to_hex(1 + (seq * 2654435761) % $3), 12, '0'))::uuid, seq
                 FROM events WHERE seq BETWEEN $1 AND $2",
                &[&(from + 1), &to, &profiles],
            )
            .await?;
        from = to;
        eprintln!("  {from} events");
    }
    client
        .execute(
            "SELECT setval('event_resolutions', $1::int8), setval(pg_get_serial_sequence('events', 'seq'), $1::int8)",
            &[&events],
        )
        .await?;
    client.batch_execute("ANALYZE").await?;
    Ok(())
}

/// The count-in-90-days segment as DuckDB SQL over the snapshot's events written to Parquet
/// (typed columns: profile_id, event, ts, revenue, currency).
async fn duckdb_side_by_side(
    engine: &crate::query::QueryEngine,
    kizuna_ms: f64,
) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("kizuna-bench-{}", Utc::now().timestamp()));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("events.parquet");
    let view = engine.view();
    let events = view.ctx.sql("SELECT profile_id, event, ts, json_number(properties, 'revenue') AS revenue, json_text(properties, 'currency') AS currency FROM events").await?;
    events
        .write_parquet(
            path.to_str().unwrap_or_default(),
            datafusion::dataframe::DataFrameWriteOptions::new().with_single_file_output(true),
            None,
        )
        .await?;
    let script = format!(
        r#"
import time, duckdb
con = duckdb.connect()
con.execute("CREATE TABLE events AS SELECT * FROM read_parquet('{path}')")
q = "SELECT profile_id FROM events WHERE event = 'Order Completed' AND ts >= now() - INTERVAL 90 DAY GROUP BY profile_id HAVING count(*) >= 3"
best = 1e9
for _ in range(3):
    t = time.perf_counter(); n = len(con.execute(q).fetchall()); best = min(best, (time.perf_counter() - t) * 1000)
print(f"{{best:.1f}} {{n}}")
"#,
        path = path.display()
    );
    let output = tokio::process::Command::new("python3")
        .arg("-c")
        .arg(&script)
        .output()
        .await?;
    if !output.status.success() {
        println!(
            "  DuckDB: not run ({}); pip install duckdb",
            String::from_utf8_lossy(&output.stderr)
                .lines()
                .last()
                .unwrap_or("")
        );
        return Ok(());
    }
    let text = String::from_utf8_lossy(&output.stdout);
    let mut parts = text.split_whitespace();
    let duck_ms: f64 = parts.next().unwrap_or("0").parse().unwrap_or(0.0);
    let duck_n = parts.next().unwrap_or("?");
    println!(
        "  DuckDB same segment  {duck_ms:>8.0} ms  ({duck_n} members, in memory from Parquet)"
    );
    println!(
        "  ratio Kizuna/DuckDB = {:.2} (target <= 1.5)",
        kizuna_ms / duck_ms.max(0.001)
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
