//! The query layer: one DataFusion `SessionContext` over the columnar snapshot, owned here and
//! swapped whole on refresh so a running query never sees half a refresh. Tables: `profiles`
//! (live profiles; `traits` is a struct of typed columns), `identities`, `events` (each with its
//! live profile id), and `merges`. Nothing here knows about HTTP.

pub mod json;
pub mod snapshot;

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use datafusion::arrow::datatypes::DataType;
use datafusion::datasource::MemTable;
use datafusion::error::DataFusionError;
use datafusion::prelude::SessionContext;
use tokio::sync::Mutex;

use crate::db::{Db, DbError};
pub use snapshot::RefreshStats;
use snapshot::Snapshot;

/// Failures of the query layer, split by whose fault they are.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// The user's definition or SQL cannot be planned.
    #[error("{0}")]
    Plan(String),
    #[error("reading the snapshot from the database: {0}")]
    Database(#[from] DbError),
    #[error("query engine failure: {0}")]
    Engine(#[from] DataFusionError),
}

/// A consistent view: the context and what its tables look like.
pub struct View {
    pub ctx: SessionContext,
    pub trait_types: BTreeMap<String, DataType>,
    pub profiles: usize,
    /// The `profiles` table's one batch (shared with it): row `i` is profile `i`, the order the
    /// customer-health built-ins are kept in, so exports put them side by side without a join.
    pub profiles_batch: datafusion::arrow::array::RecordBatch,
    /// The batches of the `health_facts` table (`crate::health::facts`).
    pub health_facts: Vec<datafusion::arrow::array::RecordBatch>,
    pub events: usize,
    /// The customer-health built-ins derived from this view, computed on first use
    /// (`crate::health::built_ins`) so every query on the view shares one computation.
    pub health: Mutex<Option<Arc<crate::health::BuiltIns>>>,
}

pub struct QueryEngine {
    db: Db,
    snapshot: Mutex<Snapshot>,
    current: RwLock<Arc<View>>,
    health: crate::health::HealthSettings,
}

impl QueryEngine {
    pub async fn new(db: Db) -> Result<Self, QueryError> {
        let mut empty = Snapshot::default();
        let view = build_view(&mut empty).await?;
        Ok(QueryEngine {
            db,
            snapshot: Mutex::new(empty),
            current: RwLock::new(Arc::new(view)),
            health: crate::health::HealthSettings::default(),
        })
    }

    /// Reads the customer-health built-ins with these event and property names.
    pub fn with_health(mut self, settings: crate::health::HealthSettings) -> Self {
        self.snapshot.get_mut().health = settings.clone();
        self.health = settings;
        self
    }

    pub fn health_settings(&self) -> &crate::health::HealthSettings {
        &self.health
    }

    pub fn db(&self) -> &Db {
        &self.db
    }

    /// The view queries run against.
    pub fn view(&self) -> Arc<View> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Catches the snapshot up with PostgreSQL and publishes a new view.
    pub async fn refresh(&self) -> Result<RefreshStats, QueryError> {
        let mut snapshot = self.snapshot.lock().await;
        let stats = snapshot.refresh(&self.db).await?;
        if stats.profiles_changed > 0 || stats.events_added > 0 {
            let view = build_view(&mut snapshot).await?;
            *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(view);
        }
        Ok(stats)
    }
}

async fn build_view(snapshot: &mut Snapshot) -> Result<View, QueryError> {
    let tables = snapshot.tables();
    let ctx = SessionContext::new();
    ctx.register_udf(json::json_text());
    ctx.register_udf(json::json_number());
    let profiles = tables.profiles.num_rows();
    let profiles_batch = tables.profiles.clone();
    ctx.register_table(
        "profiles",
        Arc::new(MemTable::try_new(
            tables.profiles.schema(),
            vec![vec![tables.profiles]],
        )?),
    )?;
    ctx.register_table(
        "identities",
        Arc::new(MemTable::try_new(
            tables.identities.schema(),
            vec![vec![tables.identities]],
        )?),
    )?;
    ctx.register_table(
        "merges",
        Arc::new(MemTable::try_new(
            tables.merges.schema(),
            vec![vec![tables.merges]],
        )?),
    )?;
    // Event batches already carry each event's surviving profile id (see the snapshot). They
    // are dealt into one partition a core so scans start in parallel.
    let n = ctx.state().config().target_partitions().max(1);
    ctx.register_table("events", dealt(tables.events, n, tables.events_schema)?)?;
    let health_facts = tables.health_facts.clone();
    ctx.register_table(
        "health_facts",
        dealt(tables.health_facts, n, crate::health::facts::schema())?,
    )?;
    Ok(View {
        ctx,
        trait_types: tables.trait_types,
        profiles,
        profiles_batch,
        health_facts,
        events: snapshot.event_rows,
        health: Mutex::new(None),
    })
}

/// Batches dealt into `partitions` partitions so scans over them run in parallel.
pub(crate) fn dealt(
    batches: Vec<datafusion::arrow::array::RecordBatch>,
    partitions: usize,
    schema: datafusion::arrow::datatypes::SchemaRef,
) -> Result<Arc<MemTable>, QueryError> {
    let schema = batches.first().map(|b| b.schema()).unwrap_or(schema);
    let n = partitions.max(1);
    let mut dealt = vec![Vec::new(); n];
    for (i, batch) in batches.into_iter().enumerate() {
        dealt[i % n].push(batch);
    }
    Ok(Arc::new(MemTable::try_new(schema, dealt)?))
}
