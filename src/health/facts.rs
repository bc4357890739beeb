//! Health facts: the typed values the built-ins read from events (an order's value, a refund,
//! a survey answer, a ticket's id), extracted once per event as the snapshot reads it. The
//! built-ins then aggregate these narrow rows instead of parsing every event's JSON again for
//! each snapshot view. One row per event and kind; a kind leaves the other kinds' columns null.

use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanBuilder, Float64Array, Float64Builder, Int64Array,
    RecordBatch, StringArray, StringBuilder, TimestampMicrosecondArray,
    TimestampMicrosecondBuilder,
};
use datafusion::arrow::datatypes::{
    DataType, Field, Float64Type, Schema, SchemaRef, TimestampMicrosecondType,
};
use datafusion::arrow::error::ArrowError;
use serde_json::Value;

use super::gaps::{median, median_gap, MICROS_PER_DAY};
use super::HealthSettings;
use crate::query::json;
use crate::query::snapshot::utc_micros;

/// The columns of the `health_facts` table. `profile_id` comes first, like the events', so
/// the snapshot re-points both after a merge the same way.
pub fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("profile_id", DataType::Utf8, false),
        Field::new("ts", utc_micros(), false),
        // An order's value (0 when it has none); null on other facts.
        Field::new("order_value", DataType::Float64, true),
        Field::new("refund", DataType::Float64, true),
        Field::new("nps", DataType::Float64, true),
        Field::new("csat", DataType::Float64, true),
        Field::new("ticket", DataType::Utf8, true),
        // True when the event opens the ticket, false when it answers it.
        Field::new("ticket_opens", DataType::Boolean, true),
    ]))
}

/// Builds the fact rows of one chunk of events.
pub struct FactsBuilder<'s> {
    s: &'s HealthSettings,
    nps: String,
    csat: String,
    profile_id: StringBuilder,
    ts: TimestampMicrosecondBuilder,
    order_value: Float64Builder,
    refund: Float64Builder,
    nps_score: Float64Builder,
    csat_score: Float64Builder,
    ticket: StringBuilder,
    ticket_opens: BooleanBuilder,
    rows: usize,
}

/// One fact's values, all null but those of its kind.
#[derive(Default)]
struct Fact {
    order_value: Option<f64>,
    refund: Option<f64>,
    nps: Option<f64>,
    csat: Option<f64>,
    ticket: Option<(String, bool)>,
}

impl<'s> FactsBuilder<'s> {
    pub fn new(s: &'s HealthSettings) -> Self {
        FactsBuilder {
            s,
            nps: s.nps_survey.to_lowercase(),
            csat: s.csat_survey.to_lowercase(),
            profile_id: StringBuilder::new(),
            ts: TimestampMicrosecondBuilder::new().with_timezone("UTC"),
            order_value: Float64Builder::new(),
            refund: Float64Builder::new(),
            nps_score: Float64Builder::new(),
            csat_score: Float64Builder::new(),
            ticket: StringBuilder::new(),
            ticket_opens: BooleanBuilder::new(),
            rows: 0,
        }
    }

    /// Adds the facts of one event (none for an event the built-ins do not read).
    pub fn push(
        &mut self,
        profile_id: &str,
        event: Option<&str>,
        ts: i64,
        properties: Option<&str>,
    ) {
        let Some(event) = event else {
            return;
        };
        let s = self.s;
        let doc = properties.unwrap_or("{}");
        let number = |keys: &[String]| json::pick(doc, keys, true).and_then(|v| v.as_f64());
        if event == s.order_event {
            // An order without a value still counts as an order, worth nothing.
            let value = number(&s.order_value_properties).unwrap_or(0.0);
            self.add(
                profile_id,
                ts,
                Fact {
                    order_value: Some(value),
                    ..Fact::default()
                },
            );
        }
        if !s.refund_event.is_empty() && event == s.refund_event {
            if let Some(refund) = number(&s.order_value_properties) {
                self.add(
                    profile_id,
                    ts,
                    Fact {
                        refund: Some(refund),
                        ..Fact::default()
                    },
                );
            }
        }
        if event == s.survey_event {
            let survey = text(doc, &s.survey_property).map(|t| t.to_lowercase());
            let score = number(std::slice::from_ref(&s.score_property));
            let answer = |name: &str, low: f64, high: f64| {
                score.filter(|v| survey.as_deref() == Some(name) && (low..=high).contains(v))
            };
            let (nps, csat) = (answer(&self.nps, 0.0, 10.0), answer(&self.csat, 1.0, 5.0));
            if nps.is_some() || csat.is_some() {
                self.add(
                    profile_id,
                    ts,
                    Fact {
                        nps,
                        csat,
                        ..Fact::default()
                    },
                );
            }
        }
        let opens = event == s.ticket_created_event;
        if opens || s.ticket_response_events.iter().any(|e| e == event) {
            if let Some(ticket) = text(doc, &s.ticket_id_property) {
                self.add(
                    profile_id,
                    ts,
                    Fact {
                        ticket: Some((ticket, opens)),
                        ..Fact::default()
                    },
                );
            }
        }
    }

    fn add(&mut self, profile_id: &str, ts: i64, fact: Fact) {
        self.profile_id.append_value(profile_id);
        self.ts.append_value(ts);
        self.order_value.append_option(fact.order_value);
        self.refund.append_option(fact.refund);
        self.nps_score.append_option(fact.nps);
        self.csat_score.append_option(fact.csat);
        let (ticket, opens) = fact.ticket.unzip();
        self.ticket.append_option(ticket);
        self.ticket_opens.append_option(opens);
        self.rows += 1;
    }

    /// The chunk's facts, or `None` when it had none.
    pub fn finish(mut self) -> Option<RecordBatch> {
        if self.rows == 0 {
            return None;
        }
        let columns: Vec<ArrayRef> = vec![
            Arc::new(self.profile_id.finish()),
            Arc::new(self.ts.finish()),
            Arc::new(self.order_value.finish()),
            Arc::new(self.refund.finish()),
            Arc::new(self.nps_score.finish()),
            Arc::new(self.csat_score.finish()),
            Arc::new(self.ticket.finish()),
            Arc::new(self.ticket_opens.finish()),
        ];
        let batch =
            RecordBatch::try_new(schema(), columns).expect("columns match the facts schema");
        // Sorted by profile id, so `per_profile` walks the profiles' sorted ids in order.
        Some(sorted(&batch).expect("a string column sorts"))
    }
}

/// A property as text, as `json::pick_text` reads it (null and absent are `None`).
fn text(doc: &str, key: &str) -> Option<String> {
    match json::pick(doc, std::slice::from_ref(&key.to_string()), false)? {
        Value::Null => None,
        Value::String(s) => Some(s),
        other => Some(other.to_string()),
    }
}

/// What the facts say about each profile, row `i` being profile `i` of the view's `profiles`
/// table (`id`, `last_seen`): `profile_id`, `pos` (= `i`), `clv`, `orders`, `avg_order_value`,
/// `last_order_at`, `order_days`, `gap_days`, `nps_score`, `csat_score`,
/// `first_response_minutes`, `days_since_last_seen`. `tickets` are `(profile_id, minutes)` of
/// the answered tickets. Facts of a profile the table does not hold (erased, or created after
/// the snapshot read the profiles) are skipped.
///
/// A direct pass over the typed columns rather than a DataFusion aggregate: grouping ~4M rows
/// by a 36-character profile id cost over a second at 1M profiles, while the profile's row
/// number indexes plain vectors here.
pub(super) fn per_profile(
    profiles: &RecordBatch,
    facts: &[RecordBatch],
    tickets: &[RecordBatch],
    now: i64,
) -> Result<RecordBatch, ArrowError> {
    let missing = |name: &str| ArrowError::SchemaError(format!("no column {name}"));
    let ids = profiles
        .column_by_name("id")
        .ok_or_else(|| missing("id"))?
        .as_string::<i32>();
    let last_seen = profiles
        .column_by_name("last_seen")
        .ok_or_else(|| missing("last_seen"))?
        .as_primitive::<TimestampMicrosecondType>();
    let n = ids.len();
    let started = std::time::Instant::now();

    // The facts are dealt to up to one thread a core; each sums into its own figures, then they
    // add up (a fact costs a few cache misses, and the cores wait for them in parallel).
    // Each thread has its own figures for every profile (64 bytes each), so a second thread
    // only pays off with millions of facts.
    let rows: usize = facts.iter().map(RecordBatch::num_rows).sum();
    let threads = std::thread::available_parallelism()
        .map_or(1, |t| t.get())
        .min(1 + rows / 1_000_000)
        .clamp(1, facts.len().max(1));
    let mut shares: Vec<Vec<&RecordBatch>> = vec![Vec::new(); threads];
    for (i, batch) in facts.iter().enumerate() {
        shares[i % threads].push(batch);
    }
    let sums = std::thread::scope(|scope| {
        let running: Vec<_> = shares
            .iter()
            .map(|share| scope.spawn(|| accumulate(ids, share, n)))
            .collect();
        running
            .into_iter()
            .map(|t| t.join().expect("a health figures thread panicked"))
            .collect::<Result<Vec<_>, _>>()
    })?;
    let mut sums = sums.into_iter();
    let (mut acc, mut order_times) = sums
        .next()
        .unwrap_or_else(|| (vec![Acc::default(); n], Vec::new()));
    for (more, times) in sums {
        for (a, b) in acc.iter_mut().zip(&more) {
            a.add(b);
        }
        order_times.extend(times);
    }
    let accumulated = started.elapsed();
    let mut responses: Vec<(u32, f64)> = Vec::new();
    for batch in tickets.iter().filter(|b| b.num_rows() > 0) {
        let batch = sorted(batch)?;
        let profile = batch.column(0).as_string::<i32>();
        let minutes = batch.column(1).as_primitive::<Float64Type>();
        let mut rows = Rows::new(ids);
        for i in 0..batch.num_rows() {
            if let (Some(row), true) = (rows.find(profile.value(i)), minutes.is_valid(i)) {
                responses.push((row, minutes.value(i)));
            }
        }
    }

    // Order times grouped by profile: a counting sort by row, then each profile's own gaps.
    let mut gap_days: Vec<Option<f64>> = vec![None; n];
    let mut start = vec![0usize; n + 1];
    for &(row, _) in &order_times {
        start[row as usize + 1] += 1;
    }
    for i in 0..n {
        start[i + 1] += start[i];
    }
    let mut grouped = vec![0i64; order_times.len()];
    let mut next = start.clone();
    for &(row, t) in &order_times {
        grouped[next[row as usize]] = t;
        next[row as usize] += 1;
    }
    drop(order_times);
    let mut gaps = Vec::new();
    for (r, gap) in gap_days.iter_mut().enumerate() {
        *gap = median_gap(&mut grouped[start[r]..start[r + 1]], &mut gaps);
    }

    responses.sort_unstable_by(|a, b| a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)));
    let mut first_response: Vec<Option<f64>> = vec![None; n];
    for group in responses.chunk_by(|a, b| a.0 == b.0) {
        first_response[group[0].0 as usize] = median(group.len(), |i| group[i].1).map(round2);
    }

    let grouped_at = started.elapsed();
    let days = |since: i64| ((now - since) as f64 / MICROS_PER_DAY).floor() as i64;
    let bought = |r: usize| acc[r].orders > 0;
    let answer = |at: i64, score: f64| (at != i64::MIN).then(|| score.round() as i64);
    let columns: Vec<(&str, ArrayRef)> = vec![
        (
            "profile_id",
            profiles.column_by_name("id").expect("checked").clone(),
        ),
        ("pos", Arc::new(Int64Array::from_iter_values(0..n as i64))),
        (
            "clv",
            Arc::new(Float64Array::from_iter((0..n).map(|r| {
                bought(r).then(|| round2((acc[r].gross - acc[r].refunded).max(0.0)))
            }))),
        ),
        (
            "orders",
            Arc::new(Int64Array::from_iter(
                (0..n).map(|r| bought(r).then_some(acc[r].orders)),
            )),
        ),
        (
            "avg_order_value",
            Arc::new(Float64Array::from_iter((0..n).map(|r| {
                bought(r).then(|| round2(acc[r].gross / acc[r].orders as f64))
            }))),
        ),
        (
            "last_order_at",
            Arc::new(
                TimestampMicrosecondArray::from_iter(
                    (0..n).map(|r| bought(r).then_some(acc[r].last_order)),
                )
                .with_timezone("UTC"),
            ),
        ),
        (
            "order_days",
            Arc::new(Int64Array::from_iter(
                (0..n).map(|r| bought(r).then(|| days(acc[r].last_order))),
            )),
        ),
        ("gap_days", Arc::new(Float64Array::from(gap_days))),
        (
            "nps_score",
            Arc::new(Int64Array::from_iter(
                acc.iter().map(|a| answer(a.nps_at, a.nps)),
            )),
        ),
        (
            "csat_score",
            Arc::new(Int64Array::from_iter(
                acc.iter().map(|a| answer(a.csat_at, a.csat)),
            )),
        ),
        (
            "first_response_minutes",
            Arc::new(Float64Array::from(first_response)),
        ),
        (
            "days_since_last_seen",
            Arc::new(Int64Array::from_iter_values(
                last_seen.values().iter().map(|t| days(*t)),
            )),
        ),
    ];
    let fields: Vec<Field> = columns
        .iter()
        .map(|(name, array)| Field::new(*name, array.data_type().clone(), *name != "pos"))
        .collect();
    let batch = RecordBatch::try_new(
        Arc::new(Schema::new(fields)),
        columns.into_iter().map(|(_, a)| a).collect(),
    );
    tracing::debug!(
        facts_ms = accumulated.as_secs_f64() * 1e3,
        group_ms = (grouped_at - accumulated).as_secs_f64() * 1e3,
        columns_ms = (started.elapsed() - grouped_at).as_secs_f64() * 1e3,
        "health figures per profile"
    );
    batch
}

/// Finds profile ids in the `profiles` table's id column, which is sorted: for ids that come in
/// ascending order (a facts batch is sorted by profile id) each search gallops forward from the
/// last, so a batch walks the column once, in memory order, instead of probing a hash map at
/// random. An id smaller than the last one starts from the beginning again (still correct).
struct Rows<'a> {
    ids: &'a StringArray,
    at: usize,
    last: &'a str,
}

impl<'a> Rows<'a> {
    fn new(ids: &'a StringArray) -> Self {
        Rows {
            ids,
            at: 0,
            last: "",
        }
    }

    fn find(&mut self, key: &'a str) -> Option<u32> {
        if key < self.last {
            self.at = 0;
        }
        self.last = key;
        let n = self.ids.len();
        // Gallop until `hi` is past the end or at an id >= key; the first such id lies in
        // [lo, hi].
        let (mut lo, mut hi, mut step) = (self.at, self.at, 1);
        while hi < n && self.ids.value(hi) < key {
            lo = hi + 1;
            hi = lo + step;
            step *= 2;
        }
        let mut end = hi.min(n);
        while lo < end {
            let mid = lo + (end - lo) / 2;
            if self.ids.value(mid) < key {
                lo = mid + 1;
            } else {
                end = mid;
            }
        }
        self.at = lo;
        (lo < n && self.ids.value(lo) == key).then_some(lo as u32)
    }
}

/// `batch` ordered by its first column (the profile id).
pub fn sorted(batch: &RecordBatch) -> Result<RecordBatch, ArrowError> {
    let order = datafusion::arrow::compute::sort_to_indices(batch.column(0), None, None)?;
    datafusion::arrow::compute::take_record_batch(batch, &order)
}

/// Running figures a profile, and the (row, time) of every order.
type Sums = (Vec<Acc>, Vec<(u32, i64)>);

/// The running figures of `n` profiles from `facts`, and the (row, time) of every order (for
/// the median interval between a customer's orders).
fn accumulate(ids: &StringArray, facts: &[&RecordBatch], n: usize) -> Result<Sums, ArrowError> {
    let missing = |name: &str| ArrowError::SchemaError(format!("no column {name}"));
    let mut acc = vec![Acc::default(); n];
    let mut order_times: Vec<(u32, i64)> = Vec::new();
    for batch in facts {
        let column = |name: &str| batch.column_by_name(name).ok_or_else(|| missing(name));
        let profile = column("profile_id")?.as_string::<i32>();
        let ts = column("ts")?.as_primitive::<TimestampMicrosecondType>();
        let order_value = column("order_value")?.as_primitive::<Float64Type>();
        let refund = column("refund")?.as_primitive::<Float64Type>();
        let nps_score = column("nps")?.as_primitive::<Float64Type>();
        let csat_score = column("csat")?.as_primitive::<Float64Type>();
        let ticket = column("ticket")?;
        let mut rows = Rows::new(ids);
        for i in 0..batch.num_rows() {
            if ticket.is_valid(i) {
                continue; // a ticket's fact: counted through `tickets`
            }
            let Some(row) = rows.find(profile.value(i)) else {
                continue;
            };
            let (a, t) = (&mut acc[row as usize], ts.value(i));
            if order_value.is_valid(i) {
                a.gross += order_value.value(i);
                a.orders += 1;
                a.last_order = a.last_order.max(t);
                order_times.push((row, t));
            }
            if refund.is_valid(i) {
                a.refunded += refund.value(i);
            }
            if nps_score.is_valid(i) && t >= a.nps_at {
                (a.nps_at, a.nps) = (t, nps_score.value(i));
            }
            if csat_score.is_valid(i) && t >= a.csat_at {
                (a.csat_at, a.csat) = (t, csat_score.value(i));
            }
        }
    }
    Ok((acc, order_times))
}

/// A profile's running figures.
#[derive(Clone, Copy)]
struct Acc {
    gross: f64,
    refunded: f64,
    orders: i64,
    last_order: i64,
    /// The latest answers and when they were given (`i64::MIN`: none).
    nps_at: i64,
    nps: f64,
    csat_at: i64,
    csat: f64,
}

impl Acc {
    /// Adds the figures `other` summed over other facts of the same profile.
    fn add(&mut self, other: &Acc) {
        self.gross += other.gross;
        self.refunded += other.refunded;
        self.orders += other.orders;
        self.last_order = self.last_order.max(other.last_order);
        if other.nps_at > self.nps_at {
            (self.nps_at, self.nps) = (other.nps_at, other.nps);
        }
        if other.csat_at > self.csat_at {
            (self.csat_at, self.csat) = (other.csat_at, other.csat);
        }
    }
}

impl Default for Acc {
    fn default() -> Self {
        Acc {
            gross: 0.0,
            refunded: 0.0,
            orders: 0,
            last_order: i64::MIN,
            nps_at: i64::MIN,
            nps: 0.0,
            csat_at: i64::MIN,
            csat: 0.0,
        }
    }
}

/// Rounds to cents, as SQL's `round(x, 2)` does (halves away from zero).
fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(events: &[(&str, &str)]) -> RecordBatch {
        let settings = HealthSettings::default();
        let mut b = FactsBuilder::new(&settings);
        for (i, (event, properties)) in events.iter().enumerate() {
            b.push("p", Some(event), i as i64, Some(properties));
        }
        b.finish().expect("facts")
    }

    fn numbers(batch: &RecordBatch, column: &str) -> Vec<Option<f64>> {
        let c = batch
            .column_by_name(column)
            .unwrap()
            .as_primitive::<Float64Type>();
        (0..c.len())
            .map(|i| c.is_valid(i).then(|| c.value(i)))
            .collect()
    }

    #[test]
    fn each_kind_fills_its_own_columns() {
        let batch = facts(&[
            ("Page Viewed", r#"{"revenue": 5}"#),
            ("Order Completed", r#"{"total": "12.5"}"#),
            ("Order Completed", r#"{}"#),
            ("Order Refunded", r#"{"revenue": 3}"#),
            ("Order Refunded", r#"{"note": "no value"}"#),
            ("Survey Responded", r#"{"survey": "NPS", "score": 9}"#),
            ("Survey Responded", r#"{"survey": "csat", "score": 7}"#),
            ("Ticket Created", r#"{"ticket_id": 42}"#),
            ("Ticket Replied", r#"{"ticket_id": "42"}"#),
            ("Ticket Resolved", r#"{}"#),
        ]);
        // The page view, the valueless refund, the out-of-range CSAT and the ticket event
        // without an id leave no fact.
        assert_eq!(batch.num_rows(), 6);
        assert_eq!(
            numbers(&batch, "order_value"),
            vec![Some(12.5), Some(0.0), None, None, None, None]
        );
        assert_eq!(
            numbers(&batch, "refund"),
            vec![None, None, Some(3.0), None, None, None]
        );
        assert_eq!(
            numbers(&batch, "nps"),
            vec![None, None, None, Some(9.0), None, None]
        );
        let tickets = batch.column_by_name("ticket").unwrap().as_string::<i32>();
        assert_eq!(tickets.value(4), "42");
        assert_eq!(tickets.value(5), "42");
        let opens = batch.column_by_name("ticket_opens").unwrap().as_boolean();
        assert!(opens.value(4) && !opens.value(5));
    }

    #[test]
    fn figures_land_on_each_profiles_own_row_and_strangers_are_skipped() {
        // Profile ids in the table's (sorted) order; GONE is not in the table.
        const A: &str = "0190a000-0000-7000-8000-00000000000a";
        const B: &str = "0190a000-0000-7000-8000-00000000000b";
        const GONE: &str = "0190a000-0000-7000-8000-0000000000ff";
        let day = 86_400_000_000i64;
        let settings = HealthSettings::default();
        let mut b = FactsBuilder::new(&settings);
        b.push(
            B,
            Some("Order Completed"),
            10 * day,
            Some(r#"{"revenue": 10}"#),
        );
        b.push(
            B,
            Some("Order Completed"),
            30 * day,
            Some(r#"{"revenue": 20.005}"#),
        );
        b.push(
            B,
            Some("Order Refunded"),
            31 * day,
            Some(r#"{"revenue": 40}"#),
        );
        b.push(
            A,
            Some("Survey Responded"),
            day,
            Some(r#"{"survey": "nps", "score": 3}"#),
        );
        b.push(
            A,
            Some("Survey Responded"),
            2 * day,
            Some(r#"{"survey": "nps", "score": 9}"#),
        );
        b.push(
            GONE,
            Some("Order Completed"),
            day,
            Some(r#"{"revenue": 5}"#),
        );
        let facts = b.finish().unwrap();
        let profiles = RecordBatch::try_new(
            Arc::new(Schema::new(vec![
                Field::new("id", DataType::Utf8, false),
                Field::new("last_seen", utc_micros(), false),
            ])),
            vec![
                Arc::new(datafusion::arrow::array::StringArray::from(vec![A, B])),
                Arc::new(
                    TimestampMicrosecondArray::from(vec![2 * day, 31 * day]).with_timezone("UTC"),
                ),
            ],
        )
        .unwrap();
        let tickets = RecordBatch::try_new(
            Arc::new(Schema::new(vec![
                Field::new("profile_id", DataType::Utf8, false),
                Field::new("minutes", DataType::Float64, false),
            ])),
            vec![
                Arc::new(datafusion::arrow::array::StringArray::from(vec![
                    A, A, GONE,
                ])),
                Arc::new(Float64Array::from(vec![10.0, 15.0, 1.0])),
            ],
        )
        .unwrap();
        let got = per_profile(&profiles, &[facts], &[tickets], 40 * day).unwrap();
        let ints = |name: &str| {
            let c = got
                .column_by_name(name)
                .unwrap()
                .as_primitive::<datafusion::arrow::datatypes::Int64Type>();
            (0..c.len())
                .map(|i| c.is_valid(i).then(|| c.value(i)))
                .collect::<Vec<_>>()
        };
        // The refund exceeds what was bought: clv stops at 0; the average stays gross.
        assert_eq!(numbers(&got, "clv"), vec![None, Some(0.0)]);
        assert_eq!(numbers(&got, "avg_order_value"), vec![None, Some(15.0)]);
        assert_eq!(ints("orders"), vec![None, Some(2)]);
        assert_eq!(ints("order_days"), vec![None, Some(10)]);
        assert_eq!(numbers(&got, "gap_days"), vec![None, Some(20.0)]);
        assert_eq!(ints("nps_score"), vec![Some(9), None]);
        assert_eq!(
            numbers(&got, "first_response_minutes"),
            vec![Some(12.5), None]
        );
        assert_eq!(ints("days_since_last_seen"), vec![Some(38), Some(9)]);
        assert_eq!(ints("pos"), vec![Some(0), Some(1)]);
    }

    #[test]
    fn rows_are_found_in_the_sorted_ids_whatever_order_the_keys_come_in() {
        let ids = datafusion::arrow::array::StringArray::from(
            (0..100).map(|i| format!("id-{i:03}")).collect::<Vec<_>>(),
        );
        let mut rows = Rows::new(&ids);
        let keys: Vec<String> = [
            "id-000", "id-003", "id-003", "id-050", "id-0505", "id-099", "id-100", "id-002", "a",
        ]
        .iter()
        .map(|k| k.to_string())
        .collect();
        let found: Vec<Option<u32>> = keys.iter().map(|k| rows.find(k)).collect();
        assert_eq!(
            found,
            vec![
                Some(0),
                Some(3),
                Some(3),
                Some(50),
                None,
                Some(99),
                None,
                Some(2),
                None
            ]
        );
    }
}
