//! `kizuna bench ingest`: posts realistic Segment batches to a Kizuna server running in this
//! process (fresh database), then COPYs the very same rows into a table of the same shape. The
//! figure is ingest rate / COPY rate, both measured in the same run on the same machine.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{ensure, Context};
use chrono::Utc;
use clap::Args;
use futures::pin_mut;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};
use uuid::Uuid;

use super::{BenchDatabase, CpuMeter};
use crate::config::Settings;
use crate::ingest::message::{parse_batch, Limits, Message};
use crate::startup::Application;

#[derive(Args, Debug)]
pub struct IngestBench {
    /// Messages to send.
    #[arg(long, default_value_t = 1_000_000)]
    pub messages: usize,
    /// Messages a batch request.
    #[arg(long, default_value_t = 100)]
    pub batch: usize,
    /// Concurrent HTTP connections (and COPY connections).
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    /// PostgreSQL server to create the benchmark database on.
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432")]
    pub server: String,
    /// Keep the benchmark database afterwards.
    #[arg(long)]
    pub keep: bool,
    /// Measure ingest alone, with identity resolution off.
    #[arg(long)]
    pub no_identity: bool,
    /// Resolve nothing during the load; afterwards time the resolver alone on the whole backlog
    /// (its throughput with no ingest competing for the cores).
    #[arg(long, conflicts_with = "no_identity")]
    pub resolve_after: bool,
    /// Offer this many messages a second instead of sending as fast as the server answers (to
    /// measure freshness at a sustained load); the COPY baseline is unchanged.
    #[arg(long)]
    pub rate: Option<u32>,
}

pub async fn run(args: IngestBench, settings: Settings) -> anyhow::Result<()> {
    ensure!(
        args.batch > 0 && args.connections > 0,
        "--batch and --connections must be positive"
    );
    let mut bench = BenchDatabase::create(&args.server, "ingest", settings).await?;
    bench.settings.identity.enabled = !args.no_identity && !args.resolve_after;
    bench.settings.query.schedule_every_secs = 0;
    let admin_token = bench.settings.auth.admin_token.clone();

    eprintln!(
        "generating {} messages in batches of {}…",
        args.messages, args.batch
    );
    let bodies = generate_bodies(args.messages, args.batch);
    let bytes: usize = bodies.iter().map(|b| b.len()).sum();
    eprintln!(
        "  {} requests, {:.0} MB, {:.0} bytes a message",
        bodies.len(),
        bytes as f64 / 1e6,
        bytes as f64 / args.messages as f64
    );

    let app = Application::build(bench.settings.clone()).await?;
    let base = format!("http://{}", app.address());
    let state = app.state();
    let handle = app.handle();
    let server = tokio::spawn(app.run_until_stopped());

    let client = reqwest::Client::new();
    let source: Value = client
        .post(format!("{base}/v1/sources"))
        .bearer_auth(&admin_token)
        .json(&json!({"name": "bench", "kind": "web"}))
        .send()
        .await?
        .json()
        .await?;
    let write_key = source["write_key"]
        .as_str()
        .context("no write key")?
        .to_string();
    let source_id: Uuid = source["id"].as_str().context("no source id")?.parse()?;

    eprintln!("ingest: {} connections…", args.connections);
    let done = Arc::new(AtomicBool::new(false));
    let probe = bench.settings.identity.enabled.then(|| {
        tokio::spawn(freshness_probe(
            base.clone(),
            write_key.clone(),
            admin_token.clone(),
            done.clone(),
        ))
    });
    ensure!(args.rate != Some(0), "--rate must be positive");
    // With --rate, request i is sent no earlier than i batches' worth of the rate after the start.
    let every = args
        .rate
        .map(|rate| std::time::Duration::from_secs_f64(args.batch as f64 / rate as f64));
    let bodies = Arc::new(bodies);
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let cpu = CpuMeter::start();
    let mut workers = Vec::new();
    for _ in 0..args.connections {
        let (bodies, next, base, key) = (
            bodies.clone(),
            next.clone(),
            base.clone(),
            write_key.clone(),
        );
        workers.push(tokio::spawn(async move {
            let client = reqwest::Client::builder()
                .pool_max_idle_per_host(1)
                .build()?;
            let mut latencies = hdrhistogram::Histogram::<u64>::new(3)?;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(body) = bodies.get(i) else { break };
                if let Some(every) = every {
                    tokio::time::sleep_until((started + every * i as u32).into()).await;
                }
                let sent = Instant::now();
                let response = client
                    .post(format!("{base}/v1/batch"))
                    .basic_auth(&key, Some(""))
                    .header("content-type", "application/json")
                    .body(body.clone())
                    .send()
                    .await?;
                ensure!(
                    response.status() == 200,
                    "batch {i}: {} {}",
                    response.status(),
                    response.text().await?
                );
                latencies.record(sent.elapsed().as_micros() as u64)?;
            }
            Ok::<_, anyhow::Error>(latencies)
        }));
    }
    let mut latencies = hdrhistogram::Histogram::<u64>::new(3)?;
    for worker in workers {
        latencies.add(worker.await??)?;
    }
    let ingest_secs = started.elapsed().as_secs_f64();
    let ingest_rate = args.messages as f64 / ingest_secs;
    let ingest_cpu = cpu.used();
    done.store(true, Ordering::Relaxed);
    let freshness = match probe {
        Some(probe) => Some(probe.await??),
        None => None,
    };

    let db = state.db.clone();
    let count = |sql: &'static str| {
        let db = db.clone();
        async move { Ok::<i64, anyhow::Error>(db.conn().await?.query_one(sql, &[]).await?.get(0)) }
    };
    let stored = count("SELECT count(*) FROM events WHERE message_id LIKE 'bench-%'").await?;
    ensure!(
        stored as usize == args.messages,
        "stored {stored} of {} messages",
        args.messages
    );
    if freshness.is_some() {
        wait_resolved(&db, std::time::Duration::from_millis(100)).await?;
    }
    let caught_up_secs = started.elapsed().as_secs_f64();
    // Ingest and resolution together, from the first request until nothing is pending.
    let caught_up_cpu = cpu.used();
    let resolved_alone = match args.resolve_after {
        true => Some(resolve_backlog(&state).await?),
        false => None,
    };
    let profiles = count("SELECT count(*) FROM profiles WHERE merged_into IS NULL").await?;

    eprintln!("COPY baseline: the same rows into events_copy…");
    let rows = Arc::new(parse_rows(&bodies)?);
    db.conn()
        .await?
        .batch_execute("CREATE TABLE events_copy (LIKE events INCLUDING ALL)")
        .await?;
    let started = Instant::now();
    let cpu = CpuMeter::start();
    let chunk = rows.len().div_ceil(args.connections);
    let mut copies = Vec::new();
    for part in 0..args.connections {
        let (db, rows) = (db.clone(), rows.clone());
        copies.push(tokio::spawn(async move {
            let end = ((part + 1) * chunk).min(rows.len());
            copy_rows(&db, source_id, &rows[part * chunk..end]).await
        }));
    }
    for copy in copies {
        copy.await??;
    }
    let copy_secs = started.elapsed().as_secs_f64();
    let copy_rate = args.messages as f64 / copy_secs;
    let copy_cpu = cpu.used();

    println!(
        "kizuna bench ingest: {} messages, batches of {}, {} connections{}",
        args.messages,
        args.batch,
        args.connections,
        args.rate
            .map(|rate| format!(", offered {rate} messages/s"))
            .unwrap_or_default()
    );
    println!("  ingest  {ingest_rate:>10.0} events/s  ({ingest_secs:.1} s)");
    println!(
        "          batch latency p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        latencies.value_at_quantile(0.50) as f64 / 1e3,
        latencies.value_at_quantile(0.99) as f64 / 1e3,
        latencies.max() as f64 / 1e3
    );
    let n = args.messages;
    println!("          CPU {}", ingest_cpu.describe(n));
    // With resolution keeping up, every event costs the machine its ingest and its resolution:
    // the cores sustain at most this many events a second, whatever the scheduling.
    let sustainable = |micros: f64| super::cores() as f64 * 1e6 / micros;
    let mut bound = None;
    match (&freshness, resolved_alone) {
        (None, Some(resolve_cpu)) => {
            let secs = resolve_cpu.wall_secs;
            println!(
                "  identity resolution alone, after the load: {n} events in {secs:.2} s ({:.0} events/s; {profiles} live profiles)",
                n as f64 / secs
            );
            println!("          CPU {}", resolve_cpu.describe(n));
            bound = Some(sustainable(
                ingest_cpu.micros_each(n) + resolve_cpu.micros_each(n),
            ));
        }
        (None, None) => println!("  identity resolution off (--no-identity)"),
        (Some(freshness), _) => {
            println!(
                "  identity resolution caught up {:.1} s after the last acknowledgement ({profiles} live profiles; {:.0} events/s overall)",
                caught_up_secs - ingest_secs,
                args.messages as f64 / caught_up_secs
            );
            println!(
                "  freshness (ack -> profile lookup sees it), {} probes: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
                freshness.len(),
                freshness.value_at_quantile(0.50) as f64 / 1e3,
                freshness.value_at_quantile(0.99) as f64 / 1e3,
                freshness.max() as f64 / 1e3
            );
            println!(
                "          CPU from the first request until caught up: {}",
                caught_up_cpu.describe(n)
            );
            bound = Some(sustainable(caught_up_cpu.micros_each(n)));
        }
    }
    println!("  COPY    {copy_rate:>10.0} rows/s    ({copy_secs:.1} s)");
    println!("          CPU {}", copy_cpu.describe(n));
    println!(
        "  ratio ingest/COPY = {:.2} (target >= 0.35 alone, >= 0.30 with identity resolution)",
        ingest_rate / copy_rate
    );
    if let Some(bound) = bound {
        println!(
            "  at these CPU costs the {} cores ingest and resolve at most {bound:.0} events/s with resolution keeping up: ratio {:.2} of COPY",
            super::cores(),
            bound / copy_rate
        );
    }

    handle.stop(true).await;
    server.await??;
    bench.finish(args.keep).await
}

/// Returns once no stored event waits for resolution, asking every `every`.
async fn wait_resolved(db: &crate::db::Db, every: std::time::Duration) -> anyhow::Result<()> {
    let conn = db.conn().await?;
    let pending = "SELECT count(*) FROM event_profiles WHERE resolved_seq IS NULL";
    while conn.query_one(pending, &[]).await?.get::<_, i64>(0) > 0 {
        tokio::time::sleep(every).await;
    }
    Ok(())
}

/// Runs a resolver over the stored backlog until nothing is pending; the time and CPU it took.
async fn resolve_backlog(state: &crate::startup::AppState) -> anyhow::Result<super::CpuUsed> {
    let resolver = crate::identity::resolver::Resolver::for_state(state);
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let cpu = CpuMeter::start();
    let running = tokio::spawn(resolver.run(stopped));
    wait_resolved(&state.db, std::time::Duration::from_millis(20)).await?;
    let used = cpu.used();
    stop.send(true)?;
    running.await?;
    Ok(used)
}

/// Every 100 ms during the load, whatever earlier probes are waiting for (open loop, so a
/// slow resolution cannot thin out the samples that would show it): identify a new person, then
/// look it up at once, and again every 50 ms until the profile shows; the time from the 200 to
/// the lookup that finds it is the freshness. A read that finds acknowledged messages the
/// resolver has not reached waits for them itself (`identity.read_wait_ms`, identity/on_read.rs),
/// so a probe needs one lookup, two if that wait runs out: about ten lookups a second.
async fn freshness_probe(
    base: String,
    write_key: String,
    token: String,
    done: Arc<AtomicBool>,
) -> anyhow::Result<hdrhistogram::Histogram<u64>> {
    let client = reqwest::Client::new();
    let mut probes = tokio::task::JoinSet::new();
    let mut n = 0;
    let mut every = tokio::time::interval(std::time::Duration::from_millis(100));
    while !done.load(Ordering::Relaxed) {
        every.tick().await;
        n += 1;
        let (client, base, key, token) = (
            client.clone(),
            base.clone(),
            write_key.clone(),
            token.clone(),
        );
        probes.spawn(async move {
            let user = format!("probe-{n}");
            let response = client
                .post(format!("{base}/v1/identify"))
                .basic_auth(&key, Some(""))
                .json(&json!({"userId": user, "traits": {"probe": n}}))
                .send()
                .await?;
            ensure!(
                response.status() == 200,
                "probe identify answered {}",
                response.status()
            );
            let acked_at = Instant::now();
            loop {
                let found = client
                    .get(format!("{base}/v1/profiles/lookup?user_id={user}"))
                    .bearer_auth(&token)
                    .send()
                    .await?
                    .status();
                // (past two minutes something is badly wrong; record what it waited)
                if found == 200 || acked_at.elapsed().as_secs() >= 120 {
                    return Ok::<_, anyhow::Error>(acked_at.elapsed());
                }
                // Every 50 ms: fine enough against a 1 s target.
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        });
    }
    let mut latencies = hdrhistogram::Histogram::<u64>::new(3)?;
    while let Some(probe) = probes.join_next().await {
        latencies.record(probe??.as_micros() as u64)?;
    }
    Ok(latencies)
}

fn parse_rows(bodies: &[bytes::Bytes]) -> anyhow::Result<Vec<Message>> {
    let limits = Limits {
        max_message_bytes: usize::MAX,
        max_request_bytes: usize::MAX,
        max_batch_messages: usize::MAX,
        max_message_id_chars: 100,
    };
    let now = Utc::now();
    let mut rows = Vec::new();
    for body in bodies {
        rows.extend(
            parse_batch(body, now, &limits)
                .map_err(|e| anyhow::anyhow!("{e}"))?
                .messages,
        );
    }
    Ok(rows)
}

async fn copy_rows(db: &crate::db::Db, source_id: Uuid, rows: &[Message]) -> anyhow::Result<()> {
    let client = db.conn().await?;
    let sink = client
        .copy_in(
            "COPY events_copy (source_id, message_id, type, event, name, user_id, anonymous_id, group_id, previous_id,
                               ts, original_timestamp, sent_at, received_at, properties, traits, context, integrations, extra)
             FROM STDIN (FORMAT binary)",
        )
        .await?;
    let types = [
        Type::UUID,
        Type::TEXT,
        Type::TEXT,
        Type::TEXT,
        Type::TEXT,
        Type::TEXT,
        Type::TEXT,
        Type::TEXT,
        Type::TEXT,
        Type::TIMESTAMPTZ,
        Type::TIMESTAMPTZ,
        Type::TIMESTAMPTZ,
        Type::TIMESTAMPTZ,
        Type::JSONB,
        Type::JSONB,
        Type::JSONB,
        Type::JSONB,
        Type::JSONB,
    ];
    let writer = BinaryCopyInWriter::new(sink, &types);
    pin_mut!(writer);
    let received_at = Utc::now();
    for m in rows {
        let row: [&(dyn ToSql + Sync); 18] = [
            &source_id,
            &m.message_id,
            &m.kind.as_str(),
            &m.event,
            &m.name,
            &m.user_id,
            &m.anonymous_id,
            &m.group_id,
            &m.previous_id,
            &m.ts,
            &m.original_timestamp,
            &m.sent_at,
            &received_at,
            &m.properties,
            &m.traits,
            &m.context,
            &m.integrations,
            &m.extra,
        ];
        writer.as_mut().write(&row).await?;
    }
    writer.finish().await?;
    Ok(())
}

const EVENTS: &[&str] = &[
    "Product Viewed",
    "Product Added",
    "Order Completed",
    "Checkout Started",
];
const PLANS: &[&str] = &["free", "plus", "pro"];
const SIZES: &[&str] = &["S", "M", "L", "XL"];

const PRODUCTS: &[(&str, &str, f64)] = &[
    ("Linen Shirt", "Apparel", 49.0),
    ("Trail Running Shoes", "Footwear", 129.9),
    ("Ceramic Pour-Over Set", "Kitchen", 39.5),
    ("Noise-Cancelling Headphones", "Electronics", 249.0),
    ("Merino Wool Beanie", "Accessories", 24.0),
    ("Cast Iron Skillet", "Kitchen", 59.0),
];

/// Request bodies of realistic mixed traffic: tracks with 300–500 bytes of properties, pages,
/// identifies with traits, screens, groups, a few aliases. Deterministic (seeded).
pub fn generate_bodies(messages: usize, batch: usize) -> Vec<bytes::Bytes> {
    let mut rng = StdRng::seed_from_u64(7);
    let base = Utc::now() - chrono::Duration::days(30);
    let mut bodies = Vec::with_capacity(messages.div_ceil(batch));
    let mut n = 0;
    while n < messages {
        let size = batch.min(messages - n);
        let batch: Vec<Value> = (0..size).map(|i| message(&mut rng, n + i, base)).collect();
        n += size;
        let body = json!({"batch": batch, "sentAt": Utc::now().to_rfc3339(), "context": {"library": {"name": "kizuna-bench", "version": "1.0"}}});
        bodies.push(bytes::Bytes::from(
            serde_json::to_vec(&body).expect("serializable"),
        ));
    }
    bodies
}

fn message(rng: &mut StdRng, i: usize, base: chrono::DateTime<Utc>) -> Value {
    let person = rng.random_range(0..200_000u32);
    let anonymous_id = format!("anon-{person:06}-{:04x}", rng.random_range(0..4u32));
    let user_id = (rng.random_range(0..10) < 6).then(|| format!("user-{person:06}"));
    let ts = base + chrono::Duration::seconds(rng.random_range(0..30 * 86_400));
    let (name, category, price) = PRODUCTS[rng.random_range(0..PRODUCTS.len())];
    let context = json!({
        "ip": format!("203.0.113.{}", rng.random_range(1..255)),
        "userAgent": "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Safari/605.1.15",
        "locale": "en-GB",
        "page": {"path": "/products/linen-shirt", "url": "https://shop.example.com/products/linen-shirt", "referrer": "https://www.google.com/"},
    });
    let roll = rng.random_range(0..100);
    let mut m = match roll {
        0..=49 => json!({
            "type": "track",
            "event": EVENTS[rng.random_range(0..EVENTS.len())],
            "properties": {
                "product_id": format!("prod_{:05}", rng.random_range(0..50_000)),
                "sku": format!("SKU-{:08}", rng.random_range(0..99_999_999)),
                "name": name, "category": category, "brand": "Kizuna Goods",
                "variant": SIZES[rng.random_range(0..SIZES.len())],
                "price": price, "quantity": rng.random_range(1..4), "currency": "EUR",
                "revenue": price * rng.random_range(1..4) as f64, "coupon": "AUTUMN10",
                "position": rng.random_range(1..40),
                "url": "https://shop.example.com/products/linen-shirt",
                "image_url": "https://cdn.example.com/img/linen-shirt-800.jpg",
            }
        }),
        50..=69 => {
            json!({"type": "page", "name": "Product", "properties": {"title": format!("{name} | Kizuna Goods"), "path": "/products/linen-shirt", "url": "https://shop.example.com/products/linen-shirt", "referrer": "https://www.google.com/search?q=linen+shirt", "search": ""}})
        }
        70..=84 => json!({"type": "identify", "traits": {
            "email": format!("customer{person}@example.com"), "name": format!("Customer {person}"),
            "plan": PLANS[rng.random_range(0..PLANS.len())], "phone": format!("+44 20 7946 {:04}", person % 10_000),
            "address": {"city": "London", "country": "GB", "postal_code": "EC1A 1BB"}, "marketing_opt_in": rng.random_bool(0.5),
        }}),
        85..=92 => {
            json!({"type": "screen", "name": "Cart", "properties": {"items": rng.random_range(1..6), "value": price}})
        }
        93..=98 => {
            json!({"type": "group", "groupId": format!("org-{}", person % 5_000), "traits": {"name": "Acme Retail", "industry": "Retail", "employees": 120}})
        }
        _ => {
            json!({"type": "alias", "previousId": anonymous_id, "userId": format!("user-{person:06}")})
        }
    };
    let obj = m.as_object_mut().expect("object");
    obj.insert("messageId".into(), json!(format!("bench-{i:08}")));
    obj.insert("anonymousId".into(), json!(anonymous_id));
    if let Some(user_id) = user_id {
        obj.entry("userId").or_insert(json!(user_id));
    }
    obj.insert("timestamp".into(), json!(ts.to_rfc3339()));
    obj.insert("context".into(), context);
    m
}
