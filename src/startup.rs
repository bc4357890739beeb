//! Building the running service: resolve the database (configured, local, or embedded), pool,
//! migrations, shared state, and the HTTP server; then run it until a shutdown signal.

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use actix_web::{dev::Server, web, App, HttpServer};
use anyhow::{bail, Context};
use tokio::sync::{watch, Notify};

use crate::auth::Authenticator;
use crate::config::Settings;
use crate::db::{self, embedded::EmbeddedPostgres, Db};
use crate::identity::resolver::Resolver;
use crate::identity::IdentityRules;
use crate::metrics::Metrics;
use crate::query::QueryEngine;
use crate::sources::WriteKeys;

/// Everything request handlers share.
pub struct AppState {
    pub settings: Settings,
    pub db: Db,
    pub auth: Authenticator,
    pub write_keys: WriteKeys,
    pub metrics: Arc<Metrics>,
    pub rules: Arc<IdentityRules>,
    /// Wakes the identity resolver when new events are stored.
    pub resolver_wake: Arc<Notify>,
    /// Told after each batch the resolver of this instance commits.
    pub resolved: Arc<Notify>,
    /// Tells the resolver of this instance that a read waits for messages (identity/on_read.rs).
    pub resolution_asked: Arc<Notify>,
    /// The DataFusion query layer over the columnar snapshot.
    pub query: Arc<QueryEngine>,
    /// Per-source token buckets of the tracking API.
    pub rate_limits: crate::ingest::rate_limit::SourceRateLimits,
    /// The suppression list of erased identifiers, as ingest checks it.
    pub suppressions: Arc<crate::privacy::Suppressions>,
    /// Whether messages may be waiting for resolution (identity/on_read.rs).
    pub backlog: Arc<crate::identity::on_read::Backlog>,
    /// Profile lookups by identifier, read together when they arrive together.
    pub lookups: Arc<crate::profiles::lookups::Lookups>,
}

pub struct Application {
    server: Server,
    address: SocketAddr,
    state: web::Data<AppState>,
    embedded: Option<EmbeddedPostgres>,
    shutdown: watch::Sender<bool>,
    background: Vec<tokio::task::JoinHandle<()>>,
}

/// The database URL to use: the configured one; else 127.0.0.1:5432 if it answers; else a
/// freshly started embedded cluster.
pub async fn resolve_database(
    settings: &Settings,
) -> anyhow::Result<(String, Option<EmbeddedPostgres>)> {
    if !settings.database.url.is_empty() {
        return Ok((settings.database.url.clone(), None));
    }
    let probe = &settings.database.probe_addr;
    if db::answers(probe, Duration::from_secs(1)).await {
        tracing::info!(%probe, "no database configured: using the local PostgreSQL, database kizuna");
        return Ok((format!("postgres://postgres@{probe}/kizuna"), None));
    }
    let dir = settings.database.embedded_dir.clone();
    let cluster = tokio::task::spawn_blocking(move || EmbeddedPostgres::start(&dir)).await??;
    Ok((cluster.url(), Some(cluster)))
}

/// Connects, creates the database if missing and applies migrations.
pub async fn prepare_database(settings: &Settings, url: &str) -> anyhow::Result<Db> {
    db::ensure_database(
        url,
        Duration::from_secs(settings.database.connect_timeout_secs),
    )
    .await?;
    let db = Db::connect(&settings.database, url)?;
    db::migrate::run(&db).await.context("applying migrations")?;
    Ok(db)
}

fn is_loopback(bind: &str) -> bool {
    use std::net::ToSocketAddrs;
    match bind.to_socket_addrs() {
        Ok(mut addrs) => addrs.all(|a| a.ip().is_loopback()),
        Err(_) => bind.starts_with("localhost:"),
    }
}

impl Application {
    pub async fn build(settings: Settings) -> anyhow::Result<Application> {
        if settings.auth.admin_token.is_empty() && !is_loopback(&settings.server.bind) {
            bail!(
                "refusing to listen on {} without an admin token: set auth.admin_token \
                 (KIZUNA__AUTH__ADMIN_TOKEN) or bind a loopback address",
                settings.server.bind
            );
        }
        let (url, embedded) = resolve_database(&settings).await?;
        let db = prepare_database(&settings, &url).await?;
        let ttl = Duration::from_secs(settings.ingest.source_cache_ttl_secs);
        let backlog = Arc::new(crate::identity::on_read::Backlog::default());
        let state = web::Data::new(AppState {
            auth: Authenticator::new(&settings.auth.admin_token, ttl),
            write_keys: WriteKeys::new(ttl),
            metrics: Arc::new(Metrics::new()),
            rules: Arc::new(IdentityRules::from_settings(&settings.identity)),
            resolver_wake: Arc::new(Notify::new()),
            resolved: Arc::new(Notify::new()),
            resolution_asked: Arc::new(Notify::new()),
            query: Arc::new(
                QueryEngine::new(db.clone())
                    .await
                    .context("starting the query engine")?
                    .with_health(settings.health.clone()),
            ),
            rate_limits: crate::ingest::rate_limit::SourceRateLimits::new(
                settings.ingest.rate_limit_per_sec,
                settings.ingest.rate_limit_burst,
            ),
            suppressions: Arc::default(),
            lookups: Arc::new(crate::profiles::lookups::Lookups::new(backlog.clone())),
            backlog,
            db,
            settings,
        });
        let (shutdown, shutdown_rx) = watch::channel(false);
        let resolver = Resolver::for_state(&state);
        crate::segments::declare_configured(&state.query, &state.settings.query.computed_traits)
            .await
            .context("declaring the computed traits of the configuration")?;
        let mut background = Vec::new();
        if state.settings.identity.enabled {
            background.push(tokio::spawn(resolver.run(shutdown_rx.clone())));
        }
        background.push(tokio::spawn(state.backlog.clone().watch(
            state.db.clone(),
            Duration::from_millis(state.settings.identity.poll_interval_ms),
            shutdown_rx.clone(),
        )));
        background.push(tokio::spawn(crate::exports::worker::run(
            state.query.clone(),
            state.settings.exports.dir.clone(),
            shutdown_rx.clone(),
        )));
        for schedule in &state.settings.exports.schedules {
            crate::exports::worker::check_schedule(schedule)
                .map_err(|e| anyhow::anyhow!("[exports] schedules: {e}"))?;
            background.push(tokio::spawn(crate::exports::worker::run_schedule(
                state.query.clone(),
                state.settings.exports.dir.clone(),
                schedule.clone(),
                shutdown_rx.clone(),
            )));
        }
        if state.settings.query.schedule_every_secs > 0 {
            let every = Duration::from_secs(state.settings.query.schedule_every_secs);
            background.push(tokio::spawn(crate::segments::run_schedule(
                state.query.clone(),
                every,
                shutdown_rx,
            )));
        }
        let listener = TcpListener::bind(&state.settings.server.bind)
            .with_context(|| format!("binding {}", state.settings.server.bind))?;
        let address = listener.local_addr()?;
        let workers = match state.settings.server.workers {
            0 => std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2),
            n => n,
        };
        let app_state = state.clone();
        let server = HttpServer::new(move || {
            App::new()
                .app_data(app_state.clone())
                .configure(crate::http::configure)
        })
        .workers(workers)
        .shutdown_timeout(state.settings.shutdown_timeout())
        .listen(listener)?
        .run();
        tracing::info!(%address, "kizuna is listening");
        Ok(Application {
            server,
            address,
            state,
            embedded,
            shutdown,
            background,
        })
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    pub fn state(&self) -> Arc<AppState> {
        self.state.clone().into_inner()
    }

    /// A handle that stops the server gracefully (as SIGTERM does).
    pub fn handle(&self) -> actix_web::dev::ServerHandle {
        self.server.handle()
    }

    /// Serves until SIGINT/SIGTERM (or `handle().stop`), lets in-flight requests finish, then
    /// closes the pool and stops the embedded cluster if one was started.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let result = self.server.await;
        tracing::info!("HTTP server stopped; finishing background work");
        let _ = self.shutdown.send(true);
        for worker in self.background {
            let _ = worker.await;
        }
        self.state.db.close();
        if let Some(cluster) = self.embedded {
            tokio::task::spawn_blocking(move || cluster.stop()).await?;
        }
        result.context("running the HTTP server")
    }
}

impl Settings {
    fn shutdown_timeout(&self) -> u64 {
        self.server.shutdown_timeout_secs
    }
}
