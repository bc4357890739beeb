//! The columnar snapshot: live profiles (traits as typed columns inferred from the data, plus the
//! raw JSON), identities, resolved events and the merge map, as Arrow record batches. It follows
//! PostgreSQL incrementally: profiles by their global `version`, events by `resolved_seq`, merges
//! through `merged_into`. Event batches carry the survivor's profile id: new events are mapped as they
//! are read, and a refresh that sees new merges rewrites the `profile_id` column of just the batches
//! that hold a merged-away id (queries then never join events with the merge map).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, BooleanBuilder, Float64Builder, Int64Builder,
    RecordBatch, StringBuilder, StructArray, TimestampMicrosecondBuilder,
};
use datafusion::arrow::compute::filter_record_batch;
use datafusion::arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef, TimeUnit};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::db::{Db, DbError};
use crate::health::facts::FactsBuilder;
use crate::health::HealthSettings;

/// Identifier kinds the `profiles` table carries as columns (the earliest of each kind).
pub const IDENTITY_COLUMNS: [&str; 3] = ["email", "user_id", "phone"];

/// Rows of events fetched per round trip while catching up.
const EVENT_CHUNK: i64 = 200_000;

struct ProfileRow {
    first_seen: i64,
    last_seen: i64,
    event_count: i64,
    traits: Map<String, Value>,
    identities: Vec<(String, String)>,
}

/// The in-memory state behind the registered tables.
#[derive(Default)]
pub struct Snapshot {
    profiles: HashMap<Uuid, ProfileRow>,
    profile_version: i64,
    merges: HashMap<Uuid, Uuid>,
    events: Vec<RecordBatch>,
    event_watermark: i64,
    pub event_rows: usize,
    /// The profile-side batches, rebuilt only after profiles change (new events alone reuse them).
    built: Option<ProfileTables>,
    /// The privacy epoch last seen: when it moves, profiles may have been erased.
    privacy_epoch: i64,
    /// Which events and properties are health facts.
    pub health: HealthSettings,
    /// The health facts of the events read so far (`crate::health::facts`), kept like the
    /// events: re-pointed after merges, dropped with erased profiles.
    facts: Vec<RecordBatch>,
}

#[derive(Clone)]
struct ProfileTables {
    profiles: RecordBatch,
    identities: RecordBatch,
    merges: RecordBatch,
    trait_types: BTreeMap<String, DataType>,
}

/// What a refresh read.
#[derive(Debug, Default, Clone, Copy)]
pub struct RefreshStats {
    pub profiles_changed: usize,
    pub events_added: usize,
}

/// The batches to register, built from a `Snapshot`.
pub struct Tables {
    pub profiles: RecordBatch,
    pub identities: RecordBatch,
    pub events: Vec<RecordBatch>,
    pub events_schema: SchemaRef,
    /// The health facts of the events (`crate::health::facts::schema`).
    pub health_facts: Vec<RecordBatch>,
    pub merges: RecordBatch,
    /// The inferred type of each (flattened, dotted) trait.
    pub trait_types: BTreeMap<String, DataType>,
}

pub fn utc_micros() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

pub fn events_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("profile_id", DataType::Utf8, false),
        Field::new("type", DataType::Utf8, false),
        Field::new("event", DataType::Utf8, true),
        Field::new("ts", utc_micros(), false),
        Field::new("properties", DataType::Utf8, true),
    ]))
}

impl Snapshot {
    /// Reads what changed in PostgreSQL since the last refresh.
    pub async fn refresh(&mut self, db: &Db) -> Result<RefreshStats, DbError> {
        let mut stats = RefreshStats::default();
        let mut new_losers = HashSet::new();
        let client = db.conn().await?;
        // Read before the changes below, so an erasure committed during this refresh is
        // caught by the next one at the latest.
        let epoch = crate::privacy::store::epoch(&**client).await?;
        if epoch != self.privacy_epoch {
            stats.profiles_changed += self.forget_erased(&client).await?;
            self.privacy_epoch = epoch;
        }
        let rows = client
            .query(
                "SELECT p.id, p.version, p.merged_into, p.first_seen, p.last_seen, p.event_count, p.traits,
                        coalesce((SELECT array_agg(i.kind ORDER BY i.first_seen, i.kind, i.value) FROM identities i WHERE i.profile_id = p.id), '{}'),
                        coalesce((SELECT array_agg(i.value ORDER BY i.first_seen, i.kind, i.value) FROM identities i WHERE i.profile_id = p.id), '{}')
                 FROM profiles p WHERE p.version > $1 ORDER BY p.version",
                &[&self.profile_version],
            )
            .await?;
        for row in &rows {
            let id: Uuid = row.get(0);
            self.profile_version = self.profile_version.max(row.get(1));
            let merged_into: Option<Uuid> = row.get(2);
            if let Some(winner) = merged_into {
                self.profiles.remove(&id);
                if self.merges.insert(id, winner) != Some(winner) {
                    new_losers.insert(id);
                }
                continue;
            }
            let kinds: Vec<String> = row.get(7);
            let values: Vec<String> = row.get(8);
            let first_seen: DateTime<Utc> = row.get(3);
            let last_seen: DateTime<Utc> = row.get(4);
            let traits: Value = row.get(6);
            self.profiles.insert(
                id,
                ProfileRow {
                    first_seen: first_seen.timestamp_micros(),
                    last_seen: last_seen.timestamp_micros(),
                    event_count: row.get(5),
                    traits: match traits {
                        Value::Object(map) => map,
                        _ => Map::new(),
                    },
                    identities: kinds.into_iter().zip(values).collect(),
                },
            );
        }
        stats.profiles_changed += rows.len();
        if !rows.is_empty() {
            self.built = None;
        }
        // Merge targets are always final survivors; re-point older entries at them.
        let merges = self.merges.clone();
        for winner in self.merges.values_mut() {
            while let Some(next) = merges.get(winner) {
                if next == winner {
                    break;
                }
                *winner = *next;
            }
        }
        if !new_losers.is_empty() {
            // A loser's id is final survivor's now (a survivor that itself lost is among the
            // new losers, so events already re-pointed at it move on too).
            let survivors: HashMap<String, String> = new_losers
                .iter()
                .map(|l| (l.to_string(), self.merges[l].to_string()))
                .collect();
            for batch in &mut self.events {
                if let Some(rewritten) = remap_profiles(batch, &survivors) {
                    *batch = rewritten;
                }
            }
            for batch in &mut self.facts {
                if let Some(rewritten) = remap_profiles(batch, &survivors) {
                    // Facts batches stay sorted by profile id (`health::facts::per_profile`).
                    *batch =
                        crate::health::facts::sorted(&rewritten).expect("a string column sorts");
                }
            }
        }

        loop {
            let rows = client
                .query(
                    "SELECT p.resolved_seq, p.profile_id, e.type, e.event, e.ts, e.properties::text
                     FROM event_profiles p JOIN events e ON e.seq = p.seq
                     WHERE p.resolved_seq > $1 AND p.profile_id IS NOT NULL
                     ORDER BY p.resolved_seq LIMIT $2",
                    &[&self.event_watermark, &EVENT_CHUNK],
                )
                .await?;
            if rows.is_empty() {
                break;
            }
            let n = rows.len();
            let mut profile_id = StringBuilder::with_capacity(n, n * 36);
            let mut kind = StringBuilder::with_capacity(n, n * 6);
            let mut event = StringBuilder::with_capacity(n, n * 12);
            let mut ts = TimestampMicrosecondBuilder::with_capacity(n).with_timezone("UTC");
            let mut properties = StringBuilder::with_capacity(n, n * 64);
            let mut health = FactsBuilder::new(&self.health);
            for row in &rows {
                self.event_watermark = self.event_watermark.max(row.get(0));
                let id: Uuid = row.get(1);
                let id = self.merges.get(&id).copied().unwrap_or(id).to_string();
                let name: Option<&str> = row.get(3);
                let at = row.get::<_, DateTime<Utc>>(4).timestamp_micros();
                let props: Option<&str> = row.get(5);
                health.push(&id, name, at, props);
                profile_id.append_value(id);
                kind.append_value(row.get::<_, &str>(2));
                event.append_option(name);
                ts.append_value(at);
                properties.append_option(props);
            }
            self.facts.extend(health.finish());
            let columns: Vec<ArrayRef> = vec![
                Arc::new(profile_id.finish()),
                Arc::new(kind.finish()),
                Arc::new(event.finish()),
                Arc::new(ts.finish()),
                Arc::new(properties.finish()),
            ];
            let batch = RecordBatch::try_new(events_schema(), columns)
                .expect("columns match the events schema");
            self.events.push(batch);
            self.event_rows += n;
            stats.events_added += n;
            if (n as i64) < EVENT_CHUNK {
                break;
            }
        }
        Ok(stats)
    }

    /// Erased profiles leave no trace in the change feeds (nothing may name them), so after an
    /// erasure the snapshot asks which of the profiles it knows are gone, and drops them, the
    /// merges into them and their events. Returns how many it dropped.
    async fn forget_erased(&mut self, client: &tokio_postgres::Client) -> Result<usize, DbError> {
        let mut known: Vec<Uuid> = self.profiles.keys().copied().collect();
        known.extend(self.merges.keys().copied());
        if known.is_empty() {
            return Ok(0);
        }
        let gone: HashSet<Uuid> = crate::privacy::store::vanished(client, &known)
            .await?
            .into_iter()
            .collect();
        if gone.is_empty() {
            return Ok(0);
        }
        self.profiles.retain(|id, _| !gone.contains(id));
        self.merges
            .retain(|loser, winner| !gone.contains(loser) && !gone.contains(winner));
        let gone_ids: HashSet<String> = gone.iter().map(Uuid::to_string).collect();
        for batch in self.events.iter_mut().chain(self.facts.iter_mut()) {
            if let Some(kept) = without_profiles(batch, &gone_ids) {
                *batch = kept;
            }
        }
        self.events.retain(|batch| batch.num_rows() > 0);
        self.facts.retain(|batch| batch.num_rows() > 0);
        self.event_rows = self.events.iter().map(RecordBatch::num_rows).sum();
        self.built = None;
        Ok(gone.len())
    }

    /// Builds the batches the query engine registers.
    pub fn tables(&mut self) -> Tables {
        let built = match &self.built {
            Some(built) => built.clone(),
            None => {
                let built = self.build_profile_tables();
                self.built = Some(built.clone());
                built
            }
        };
        Tables {
            profiles: built.profiles,
            identities: built.identities,
            events: self.events.clone(),
            events_schema: events_schema(),
            health_facts: self.facts.clone(),
            merges: built.merges,
            trait_types: built.trait_types,
        }
    }

    fn build_profile_tables(&self) -> ProfileTables {
        let mut ids: Vec<&Uuid> = self.profiles.keys().collect();
        ids.sort_unstable();
        let n = ids.len();

        // Flatten nested trait objects into dotted names and infer one type per name.
        let flat: Vec<BTreeMap<String, &Value>> = ids
            .iter()
            .map(|id| {
                let mut out = BTreeMap::new();
                flatten("", &self.profiles[*id].traits, &mut out);
                out
            })
            .collect();
        let mut trait_types: BTreeMap<String, DataType> = BTreeMap::new();
        for traits in &flat {
            for (name, value) in traits {
                let seen = match value {
                    Value::Bool(_) => DataType::Boolean,
                    Value::Number(_) => DataType::Float64,
                    Value::String(_) => DataType::Utf8,
                    _ => DataType::LargeUtf8, // arrays: kept as JSON text
                };
                trait_types
                    .entry(name.clone())
                    .and_modify(|t| {
                        if *t != seen {
                            *t = DataType::LargeUtf8;
                        }
                    })
                    .or_insert(seen);
            }
        }
        for t in trait_types.values_mut() {
            if *t == DataType::LargeUtf8 {
                *t = DataType::Utf8; // mixed types: compared as text
            }
        }

        let mut id_col = StringBuilder::with_capacity(n, n * 36);
        let mut first_seen = TimestampMicrosecondBuilder::with_capacity(n).with_timezone("UTC");
        let mut last_seen = TimestampMicrosecondBuilder::with_capacity(n).with_timezone("UTC");
        let mut event_count = Int64Builder::with_capacity(n);
        let mut raw = StringBuilder::with_capacity(n, n * 64);
        let (mut i_profile, mut i_kind, mut i_value) = (
            StringBuilder::new(),
            StringBuilder::new(),
            StringBuilder::new(),
        );
        for id in &ids {
            let p = &self.profiles[*id];
            let id = id.to_string();
            id_col.append_value(&id);
            first_seen.append_value(p.first_seen);
            last_seen.append_value(p.last_seen);
            event_count.append_value(p.event_count);
            raw.append_value(Value::Object(p.traits.clone()).to_string());
            for (kind, value) in &p.identities {
                i_profile.append_value(&id);
                i_kind.append_value(kind);
                i_value.append_value(value);
            }
        }
        let mut fields = vec![
            Field::new("id", DataType::Utf8, false),
            Field::new("first_seen", utc_micros(), false),
            Field::new("last_seen", utc_micros(), false),
            Field::new("event_count", DataType::Int64, false),
            Field::new("traits_json", DataType::Utf8, false),
        ];
        let mut columns: Vec<ArrayRef> = vec![
            Arc::new(id_col.finish()),
            Arc::new(first_seen.finish()),
            Arc::new(last_seen.finish()),
            Arc::new(event_count.finish()),
            Arc::new(raw.finish()),
        ];
        if !trait_types.is_empty() {
            let mut children: Vec<ArrayRef> = Vec::with_capacity(trait_types.len());
            let mut child_fields = Vec::with_capacity(trait_types.len());
            for (name, data_type) in &trait_types {
                child_fields.push(Field::new(name, data_type.clone(), true));
                children.push(trait_column(&flat, name, data_type));
            }
            let struct_fields = Fields::from(child_fields);
            let array = StructArray::try_new(struct_fields.clone(), children, None)
                .expect("children match fields");
            fields.push(Field::new("traits", DataType::Struct(struct_fields), false));
            columns.push(Arc::new(array));
        }
        // The earliest identifier of each main kind as a column, for exports and SQL conditions
        // (identities come ordered by first_seen).
        for kind in IDENTITY_COLUMNS {
            let mut column = StringBuilder::with_capacity(n, n * 16);
            for id in &ids {
                column.append_option(
                    self.profiles[*id]
                        .identities
                        .iter()
                        .find(|(k, _)| k == kind)
                        .map(|(_, v)| v.as_str()),
                );
            }
            fields.push(Field::new(kind, DataType::Utf8, true));
            columns.push(Arc::new(column.finish()));
        }
        let profiles = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
            .expect("columns match fields");

        let identities = RecordBatch::try_new(
            Arc::new(Schema::new(vec![
                Field::new("profile_id", DataType::Utf8, false),
                Field::new("kind", DataType::Utf8, false),
                Field::new("value", DataType::Utf8, false),
            ])),
            vec![
                Arc::new(i_profile.finish()),
                Arc::new(i_kind.finish()),
                Arc::new(i_value.finish()),
            ],
        )
        .expect("identity columns");

        let (mut loser, mut winner) = (StringBuilder::new(), StringBuilder::new());
        for (l, w) in &self.merges {
            loser.append_value(l.to_string());
            winner.append_value(w.to_string());
        }
        let merges = RecordBatch::try_new(
            Arc::new(Schema::new(vec![
                Field::new("loser", DataType::Utf8, false),
                Field::new("winner", DataType::Utf8, false),
            ])),
            vec![Arc::new(loser.finish()), Arc::new(winner.finish())],
        )
        .expect("merge columns");

        ProfileTables {
            profiles,
            identities,
            merges,
            trait_types,
        }
    }
}

/// `batch` with every profile id found in `survivors` replaced by its survivor, or `None` when
/// the batch holds none of them.
fn remap_profiles(batch: &RecordBatch, survivors: &HashMap<String, String>) -> Option<RecordBatch> {
    let ids = batch.column(0).as_string::<i32>();
    if !ids.iter().flatten().any(|id| survivors.contains_key(id)) {
        return None;
    }
    let mut remapped = StringBuilder::with_capacity(ids.len(), ids.value_data().len());
    for id in ids.iter() {
        remapped.append_option(id.map(|id| survivors.get(id).map_or(id, String::as_str)));
    }
    let mut columns = batch.columns().to_vec();
    columns[0] = Arc::new(remapped.finish());
    Some(RecordBatch::try_new(batch.schema(), columns).expect("same schema"))
}

/// `batch` without the rows of the profiles in `gone`, or `None` when it holds none of them.
fn without_profiles(batch: &RecordBatch, gone: &HashSet<String>) -> Option<RecordBatch> {
    let ids = batch.column(0).as_string::<i32>();
    if !ids.iter().flatten().any(|id| gone.contains(id)) {
        return None;
    }
    let keep: BooleanArray = ids
        .iter()
        .map(|id| Some(!id.is_some_and(|id| gone.contains(id))))
        .collect();
    Some(filter_record_batch(batch, &keep).expect("a mask as long as the batch"))
}

fn flatten<'a>(prefix: &str, map: &'a Map<String, Value>, out: &mut BTreeMap<String, &'a Value>) {
    for (key, value) in map {
        let name = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        match value {
            Value::Object(inner) => flatten(&name, inner, out),
            Value::Null => {}
            other => {
                out.insert(name, other);
            }
        }
    }
}

fn trait_column(flat: &[BTreeMap<String, &Value>], name: &str, data_type: &DataType) -> ArrayRef {
    match data_type {
        DataType::Boolean => {
            let mut b = BooleanBuilder::with_capacity(flat.len());
            for t in flat {
                b.append_option(t.get(name).and_then(|v| v.as_bool()));
            }
            Arc::new(b.finish())
        }
        DataType::Float64 => {
            let mut b = Float64Builder::with_capacity(flat.len());
            for t in flat {
                b.append_option(t.get(name).and_then(|v| v.as_f64()));
            }
            Arc::new(b.finish())
        }
        _ => {
            let mut b = StringBuilder::with_capacity(flat.len(), flat.len() * 8);
            for t in flat {
                match t.get(name) {
                    None => b.append_null(),
                    Some(Value::String(s)) => b.append_value(s),
                    Some(other) => b.append_value(other.to_string()),
                }
            }
            Arc::new(b.finish())
        }
    }
}
