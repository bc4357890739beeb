//! `kizuna bench health`: seeds the segments bench's profiles and events plus survey answers,
//! support tickets and refunds, then times the customer-health report: the snapshot load, the
//! first report (which computes the per-profile built-ins), a warm report over everyone, reports
//! over a trait segment and a built-in segment, and the first report after an incremental refresh.

use std::time::Instant;

use clap::Args;
use serde_json::json;

use super::BenchDatabase;
use crate::config::Settings;
use crate::db::Db;
use crate::health::report;
use crate::startup::Application;

#[derive(Args, Debug)]
pub struct HealthBench {
    #[arg(long, default_value_t = 1_000_000)]
    pub profiles: i64,
    /// Track events of the segments bench (a fifth are orders); health events come on top.
    #[arg(long, default_value_t = 10_000_000)]
    pub events: i64,
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432")]
    pub server: String,
    #[arg(long)]
    pub keep: bool,
}

/// One kind of health event: for profile `g` (1..=profiles) where `cond` holds, an event named
/// `event` at `ts` with `properties`. The expressions are constants of this file.
struct Kind {
    event: &'static str,
    cond: &'static str,
    ts: &'static str,
    properties: &'static str,
}

const KINDS: [Kind; 5] = [
    // A quarter of profiles answered NPS, a fifth CSAT, within the last half year.
    Kind {
        event: "Survey Responded",
        cond: "g % 4 = 0",
        ts: "now() - ((g * 7919) % 15552000) * interval '1 second'",
        properties: "jsonb_build_object('survey', 'nps', 'score', (g * 7) % 11)",
    },
    Kind {
        event: "Survey Responded",
        cond: "g % 5 = 0",
        ts: "now() - ((g * 6007) % 15552000) * interval '1 second'",
        properties: "jsonb_build_object('survey', 'csat', 'score', 1 + (g * 3) % 5)",
    },
    // A fifth opened a ticket in the last 90 days; four in five of those got an answer.
    Kind {
        event: "Ticket Created",
        cond: "g % 5 = 1",
        ts: "now() - (g % 90) * interval '1 day'",
        properties: "jsonb_build_object('ticket_id', 'tk-' || g)",
    },
    Kind {
        event: "Ticket Replied",
        cond: "g % 5 = 1 AND g % 25 <> 1",
        ts: "now() - (g % 90) * interval '1 day' + ((g * 37) % 600) * interval '1 minute'",
        properties: "jsonb_build_object('ticket_id', 'tk-' || g)",
    },
    // One in fifty asked for 10 back.
    Kind {
        event: "Order Refunded",
        cond: "g % 50 = 2",
        ts: "now() - (g % 30) * interval '1 day'",
        properties: "jsonb_build_object('revenue', 10)",
    },
];

/// Adds the health events after the seeded `events` (seq `events + 1` on), resolved.
async fn seed_health(db: &Db, profiles: i64, events: i64) -> anyhow::Result<u64> {
    let client = db.conn().await?;
    let mut base = events;
    let mut stored = 0;
    for kind in &KINDS {
        stored += client
            .execute(
                &format!(
                    "INSERT INTO events (seq, source_id, message_id, type, event, ts, received_at, properties)
                     SELECT $1::int8 + g, '00000000-0000-7000-8000-000000000001', 'health-' || ($1::int8 + g),
                            'track', $3, {ts}, now(), {properties}
                     FROM generate_series(1, $2::int8) g WHERE {cond}",
                    ts = kind.ts,
                    properties = kind.properties,
                    cond = kind.cond
                ),
                &[&base, &profiles, &kind.event],
            )
            .await?;
        client
            .execute(
                "INSERT INTO event_profiles (seq, ts, profile_id, resolved_seq)
                 SELECT seq, ts, ('00000000-0000-7000-8000-' || lpad(to_hex(seq - $1::int8), 12, '0'))::uuid, seq
                 FROM events WHERE seq > $1::int8 AND seq <= $1::int8 + $2::int8",
                &[&base, &profiles],
            )
            .await?;
        base += profiles;
        eprintln!("  {} ({})", kind.event, kind.cond);
    }
    client
        .execute(
            "SELECT setval('event_resolutions', $1::int8), setval(pg_get_serial_sequence('events', 'seq'), $1::int8)",
            &[&base],
        )
        .await?;
    client.batch_execute("ANALYZE").await?;
    Ok(stored)
}

/// CPU seconds this process has used (user + system), to tell work from waiting on a busy machine.
fn cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at the state, field 3.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

/// Milliseconds of the fastest of three reports, and the last report.
async fn best_of_three(
    engine: &crate::query::QueryEngine,
    segment: Option<uuid::Uuid>,
) -> anyhow::Result<(f64, report::HealthReport)> {
    let mut best = f64::MAX;
    let mut last = None;
    for _ in 0..3 {
        let started = Instant::now();
        last = Some(report::report(engine, segment).await?);
        best = best.min(started.elapsed().as_secs_f64() * 1e3);
    }
    let last = last.ok_or_else(|| anyhow::anyhow!("no report"))?;
    Ok((best, last))
}

pub async fn run(args: HealthBench, settings: Settings) -> anyhow::Result<()> {
    let mut bench = BenchDatabase::create(&args.server, "health", settings).await?;
    bench.settings.query.schedule_every_secs = 0;
    let app = Application::build(bench.settings.clone()).await?;
    let state = app.state();
    let handle = app.handle();
    let server = tokio::spawn(app.run_until_stopped());
    let db = state.db.clone();

    let started = Instant::now();
    super::segments::seed(&db, args.profiles, args.events).await?;
    let health_events = seed_health(&db, args.profiles, args.events).await?;
    let seed_secs = started.elapsed().as_secs_f64();

    let engine = &state.query;
    let started = Instant::now();
    engine.refresh().await?;
    let load_secs = started.elapsed().as_secs_f64();

    let started = Instant::now();
    let cpu = cpu_secs();
    let first = report::report(engine, None).await?;
    let first_ms = started.elapsed().as_secs_f64() * 1e3;
    let first_cpu_ms = (cpu_secs() - cpu) * 1e3;
    let (warm_ms, _) = best_of_three(engine, None).await?;

    let pro = crate::segments::store::insert(
        &db,
        "pro plan",
        None,
        &json!({"trait": "plan", "op": "eq", "value": "pro"}),
    )
    .await?;
    let (pro_ms, pro_report) = best_of_three(engine, Some(pro.id)).await?;
    let detractors = crate::segments::store::insert(
        &db,
        "detractors",
        None,
        &json!({"computed": "nps_group", "op": "eq", "value": "detractor"}),
    )
    .await?;
    let (detractors_ms, detractors_report) = best_of_three(engine, Some(detractors.id)).await?;

    // 10,000 new orders, an incremental refresh, then the first report on the new view.
    super::segments::seed_late_orders(&db, args.profiles).await?;
    let started = Instant::now();
    let refreshed = engine.refresh().await?;
    let refresh_ms = started.elapsed().as_secs_f64() * 1e3;
    let started = Instant::now();
    report::report(engine, None).await?;
    let after_refresh_ms = started.elapsed().as_secs_f64() * 1e3;

    println!(
        "kizuna bench health: {} profiles, {} events + {health_events} survey/ticket/refund events (seeded in {seed_secs:.0} s)",
        args.profiles, args.events
    );
    println!("  snapshot load                {load_secs:>8.1} s");
    println!(
        "  first report (built-ins)     {first_ms:>8.0} ms  ({first_cpu_ms:.0} ms CPU; NPS {:?}, CLV avg {:?}; target < 1000 ms)",
        first.nps.score, first.clv.avg
    );
    println!("  warm report, everyone        {warm_ms:>8.0} ms  (target < 1000 ms)");
    println!(
        "  report over a trait segment  {pro_ms:>8.0} ms  ({} profiles)",
        pro_report.profiles
    );
    println!(
        "  report over nps_group        {detractors_ms:>8.0} ms  ({} profiles)",
        detractors_report.profiles
    );
    println!(
        "  refresh after {} new events {refresh_ms:.0} ms, then the first report {after_refresh_ms:.0} ms (target < 1000 ms)",
        refreshed.events_added
    );

    handle.stop(true).await;
    server.await??;
    bench.finish(args.keep).await
}
