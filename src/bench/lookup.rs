//! `kizuna bench lookup`: seeds N unified profiles (each with a user id, an email, an anonymous
//! id and traits) straight into a fresh database, then drives `GET /v1/profiles/lookup` from
//! concurrent keep-alive connections and reports requests/s and latency percentiles.

use std::time::{Duration, Instant};

use anyhow::ensure;
use clap::Args;
use rand::{Rng, SeedableRng};

use super::BenchDatabase;
use crate::config::Settings;
use crate::startup::Application;

#[derive(Args, Debug)]
pub struct LookupBench {
    /// Profiles to seed.
    #[arg(long, default_value_t = 1_000_000)]
    pub profiles: i64,
    /// Concurrent connections.
    #[arg(long, default_value_t = 16)]
    pub connections: usize,
    /// Seconds to measure (after a 2 s warm-up).
    #[arg(long, default_value_t = 15)]
    pub seconds: u64,
    /// PostgreSQL server to create the benchmark database on.
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432")]
    pub server: String,
    /// Keep the benchmark database afterwards.
    #[arg(long)]
    pub keep: bool,
    /// Offer a fixed total rate (requests/s) instead of sending as fast as answers come back.
    /// A request sent late because the previous answer on its connection came late is measured
    /// from its scheduled send time, so a server that falls behind is charged for the queue it
    /// builds (no coordinated omission, as wrk2 does); one sent on time, from when it went.
    #[arg(long)]
    pub rate: Option<u32>,
}

pub async fn run(args: LookupBench, settings: Settings) -> anyhow::Result<()> {
    let bench = BenchDatabase::create(&args.server, "lookup", settings).await?;
    let app = Application::build(bench.settings.clone()).await?;
    let base = format!("http://{}", app.address());
    let db = app.state().db.clone();
    let handle = app.handle();
    let server = tokio::spawn(app.run_until_stopped());

    eprintln!("seeding {} profiles…", args.profiles);
    let started = Instant::now();
    let client = db.conn().await?;
    client
        .batch_execute(&format!(
            "INSERT INTO sources (id, name, kind, write_key_hash, write_key_hint)
               VALUES ('00000000-0000-7000-8000-000000000001', 'seed', 'web', '\\x00', 'seed');
             INSERT INTO profiles (id, traits, trait_meta, first_seen, last_seen, event_count)
               SELECT ('00000000-0000-7000-8000-' || lpad(to_hex(g), 12, '0'))::uuid,
                      jsonb_build_object('email', 'customer' || g || '@example.com', 'name', 'Customer ' || g,
                                         'plan', (ARRAY['free','plus','pro'])[1 + g % 3], 'city', 'London',
                                         'marketing_opt_in', g % 2 = 0),
                      '{{}}'::jsonb, now() - interval '90 days', now(), 1 + g % 40
               FROM generate_series(1, {n}) g;
             INSERT INTO identities (kind, value, profile_id, source_id, first_seen)
               SELECT k.kind, CASE k.kind WHEN 'email' THEN 'customer' || g || '@example.com'
                                          WHEN 'user_id' THEN 'user-' || g ELSE 'anon-' || g END,
                      ('00000000-0000-7000-8000-' || lpad(to_hex(g), 12, '0'))::uuid,
                      '00000000-0000-7000-8000-000000000001', now() - interval '90 days'
               FROM generate_series(1, {n}) g CROSS JOIN (VALUES ('email'), ('user_id'), ('anonymous_id')) AS k(kind);
             ANALYZE profiles; ANALYZE identities;",
            n = args.profiles
        ))
        .await?;
    // A database that has run a while has its rows' hint bits and visibility map set and its
    // pages written out; fresh rows would have autovacuum and the first readers set those bits,
    // and the checkpointer write the seed's gigabyte, during the measurement.
    client
        .batch_execute("VACUUM (ANALYZE) profiles, identities")
        .await?;
    if let Err(e) = client.batch_execute("CHECKPOINT").await {
        eprintln!(
            "  (no CHECKPOINT after seeding: {e}; the checkpointer may write during the run)"
        );
    }
    drop(client);
    eprintln!("  seeded in {:.1} s", started.elapsed().as_secs_f64());

    let token = bench.settings.auth.admin_token.clone();
    let measure = |seconds: u64| {
        let (base, token) = (base.clone(), token.clone());
        async move {
            let deadline = Instant::now() + Duration::from_secs(seconds);
            let mut tasks = Vec::new();
            for worker in 0..args.connections {
                let (base, token) = (base.clone(), token.clone());
                let (n, rate, connections) = (args.profiles, args.rate, args.connections);
                tasks.push(tokio::spawn(async move {
                    let client = reqwest::Client::builder()
                        .pool_max_idle_per_host(1)
                        .build()?;
                    let mut rng = rand::rngs::StdRng::seed_from_u64(worker as u64);
                    let mut latencies = hdrhistogram::Histogram::<u64>::new(3)?;
                    // With a rate, this connection's share of it, staggered across connections.
                    let interval =
                        rate.map(|r| Duration::from_secs_f64(connections as f64 / r.max(1) as f64));
                    let mut scheduled = interval
                        .map(|i| Instant::now() + i.mul_f64(worker as f64 / connections as f64));
                    while Instant::now() < deadline {
                        let g = rng.random_range(1..=n);
                        let url =
                            format!("{base}/v1/profiles/lookup?email=customer{g}@example.com");
                        // Behind schedule (the last answer came late), the request is charged
                        // from when it should have gone. On schedule, from when it goes: the
                        // timer wakes up to a millisecond after `at` (its resolution), which is
                        // the load generator's lateness, not the server's.
                        let sent = match (scheduled.as_mut(), interval) {
                            (Some(at), Some(interval)) => {
                                let this = *at;
                                *at += interval;
                                if Instant::now() < this {
                                    tokio::time::sleep_until(this.into()).await;
                                    Instant::now()
                                } else {
                                    this
                                }
                            }
                            _ => Instant::now(),
                        };
                        let response = client.get(url).bearer_auth(&token).send().await?;
                        let status = response.status();
                        let _ = response.bytes().await?;
                        ensure!(status == 200, "lookup answered {status}");
                        latencies.record(sent.elapsed().as_micros() as u64)?;
                    }
                    Ok::<_, anyhow::Error>(latencies)
                }));
            }
            let mut all = hdrhistogram::Histogram::<u64>::new(3)?;
            for task in tasks {
                all.add(task.await??)?;
            }
            Ok::<_, anyhow::Error>(all)
        }
    };
    measure(2).await?;
    let cpu = super::CpuMeter::start();
    let latencies = measure(args.seconds).await?;
    let cpu = cpu.used();
    let rps = latencies.len() as f64 / args.seconds as f64;
    println!(
        "kizuna bench lookup: {} profiles, {} connections, {} s, {}",
        args.profiles,
        args.connections,
        args.seconds,
        match args.rate {
            Some(r) =>
                format!("offered {r} requests/s (a late request's latency from its scheduled send)"),
            None => "closed loop (as fast as answers come back)".into(),
        }
    );
    println!("  {rps:.0} requests/s");
    println!("  CPU {}", cpu.describe(latencies.len() as usize));
    println!(
        "  latency p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms",
        latencies.value_at_quantile(0.50) as f64 / 1e3,
        latencies.value_at_quantile(0.99) as f64 / 1e3,
        latencies.value_at_quantile(0.999) as f64 / 1e3,
        latencies.max() as f64 / 1e3
    );
    println!("  target: p99 < 5 ms at >= 5000 requests/s");

    handle.stop(true).await;
    server.await??;
    bench.finish(args.keep).await
}
