//! PostgreSQL access: the connection pool, how database failures map to client answers, the
//! migrations runner and the embedded default cluster.

pub mod embedded;
pub mod migrate;

use std::future::Future;
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use deadpool_postgres::{Manager, ManagerConfig, Pool, QueueMode, RecyclingMethod, Runtime};
use tokio_postgres::NoTls;

use crate::config::DatabaseSettings;
use crate::error::ApiError;

/// The pool plus the time budget every request-path database operation gets.
#[derive(Clone)]
pub struct Db {
    pool: Pool,
    op_timeout: Duration,
    /// Requests allowed to queue for a connection (0: unbounded).
    max_waiting: usize,
    /// Requests inside `pool.get()` right now (background work is not counted).
    requests_in_line: Arc<AtomicUsize>,
}

tokio::task_local! {
    /// Set while an HTTP request is served: only requests are shed when too many queue for a
    /// connection; background work (resolver, exports, snapshot) waits its turn.
    static REQUEST_PATH: ();
}

/// Runs `work` as request-path work (see `Db::conn`).
pub async fn on_request_path<F: Future>(work: F) -> F::Output {
    REQUEST_PATH.scope((), work).await
}

/// Leaves the line of requests waiting for a connection when dropped.
struct InLine<'a>(&'a AtomicUsize);

impl Drop for InLine<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Why a database operation failed, split by what the client should do about it.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The server cannot be reached or did not answer in time: retry later.
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
    /// Too many requests already wait for a pooled connection: shed this one at once.
    #[error("{0} requests are already waiting for a database connection")]
    Saturated(usize),
    /// The server answered with an error.
    #[error(transparent)]
    Query(#[from] tokio_postgres::Error),
    /// An operation shared by several callers (a batch) failed with a server error, told to
    /// each of them.
    #[error("database query: {0}")]
    Shared(String),
}

impl DbError {
    /// The SQLSTATE of a server-side error, if any.
    pub fn code(&self) -> Option<&tokio_postgres::error::SqlState> {
        match self {
            DbError::Query(e) => e.code(),
            DbError::Unavailable(_) | DbError::Saturated(_) | DbError::Shared(_) => None,
        }
    }

    /// This failure as told to one of several callers that shared the operation (the server's
    /// error cannot be copied): what the client should do about it stays the same.
    pub fn for_each_caller(&self) -> DbError {
        match self {
            DbError::Unavailable(detail) => DbError::Unavailable(detail.clone()),
            DbError::Saturated(waiting) => DbError::Saturated(*waiting),
            DbError::Query(e) if is_connection_error(e) => DbError::Unavailable(e.to_string()),
            DbError::Query(e) => DbError::Shared(format!("{e:#}")),
            DbError::Shared(detail) => DbError::Shared(detail.clone()),
        }
    }
}

impl From<deadpool_postgres::PoolError> for DbError {
    fn from(err: deadpool_postgres::PoolError) -> Self {
        DbError::Unavailable(err.to_string())
    }
}

impl From<DbError> for ApiError {
    fn from(err: DbError) -> Self {
        match err {
            DbError::Unavailable(detail) => {
                tracing::warn!(%detail, "database unavailable");
                ApiError::unavailable("the database is unavailable; retry later")
            }
            DbError::Saturated(waiting) => {
                tracing::warn!(waiting, "connection pool saturated; shedding a request");
                ApiError::Unavailable {
                    detail: format!(
                        "the server is overloaded ({waiting} requests are waiting for a database connection); retry later"
                    ),
                    retry_after_secs: 1,
                }
            }
            DbError::Query(e) if is_connection_error(&e) => {
                tracing::warn!(error = %e, "database connection lost");
                ApiError::unavailable("the database is unavailable; retry later")
            }
            // Class 22 (data exception): a value the client sent that PostgreSQL cannot hold
            // or convert (NUL in text, an out-of-range number, a malformed time): their
            // mistake, not a server error.
            DbError::Query(e) if e.code().is_some_and(|c| c.code().starts_with("22")) => {
                let reason = e
                    .as_db_error()
                    .map(|db| db.message().to_string())
                    .unwrap_or_else(|| e.to_string());
                ApiError::BadRequest(format!("a value in the request is invalid: {reason}"))
            }
            DbError::Query(e) => {
                ApiError::Internal(anyhow::Error::new(e).context("database query"))
            }
            DbError::Shared(detail) => {
                ApiError::Internal(anyhow::anyhow!("database query: {detail}"))
            }
        }
    }
}

/// True when the error means "no server", not "the server said no".
pub fn is_connection_error(err: &tokio_postgres::Error) -> bool {
    use tokio_postgres::error::SqlState;
    if err.is_closed() {
        return true;
    }
    match err.code() {
        None => true,
        Some(code) => {
            *code == SqlState::ADMIN_SHUTDOWN
                || *code == SqlState::CRASH_SHUTDOWN
                || *code == SqlState::CANNOT_CONNECT_NOW
                || *code == SqlState::TOO_MANY_CONNECTIONS
                || code.code().starts_with("08")
        }
    }
}

impl Db {
    pub fn connect(settings: &DatabaseSettings, url: &str) -> anyhow::Result<Db> {
        let mut pg = tokio_postgres::Config::from_str(url).context("parsing the database URL")?;
        pg.connect_timeout(Duration::from_secs(settings.connect_timeout_secs));
        pg.application_name("kizuna");
        pg.keepalives_idle(Duration::from_secs(30));
        let manager = Manager::from_config(
            pg,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let acquire = Duration::from_secs(settings.acquire_timeout_secs);
        let pool = Pool::builder(manager)
            .max_size(settings.pool_size)
            .queue_mode(QueueMode::Lifo)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(acquire))
            .create_timeout(Some(Duration::from_secs(settings.connect_timeout_secs)))
            .recycle_timeout(Some(Duration::from_secs(2)))
            .build()
            .context("building the connection pool")?;
        Ok(Db {
            pool,
            op_timeout: Duration::from_secs(settings.statement_timeout_secs),
            max_waiting: settings.max_waiting,
            requests_in_line: Arc::new(AtomicUsize::new(0)),
        })
    }

    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// A pooled connection; `Unavailable` when none can be had in time. On the request path,
    /// `Saturated` at once when `max_waiting` requests already wait for one: queueing longer
    /// only adds latency to requests that would time out anyway.
    pub async fn conn(&self) -> Result<deadpool_postgres::Object, DbError> {
        if self.max_waiting == 0 || REQUEST_PATH.try_with(|_| ()).is_err() {
            return Ok(self.pool.get().await?);
        }
        let ahead = self.requests_in_line.fetch_add(1, Ordering::SeqCst);
        let in_line = InLine(&self.requests_in_line);
        // With a free connection `get` returns at once, so those counted are (almost) only the
        // ones truly waiting; beyond the pool's size every caller waits.
        let waiting = ahead.saturating_sub(self.pool.status().available);
        if waiting >= self.max_waiting {
            return Err(DbError::Saturated(waiting));
        }
        let conn = self.pool.get().await;
        drop(in_line);
        Ok(conn?)
    }

    /// Runs a request-path database operation under the time budget: a hung database becomes a
    /// prompt 503, never a request that waits forever.
    pub async fn timed<T>(
        &self,
        op: impl Future<Output = Result<T, DbError>>,
    ) -> Result<T, DbError> {
        match tokio::time::timeout(self.op_timeout, op).await {
            Ok(result) => result,
            Err(_) => Err(DbError::Unavailable(format!(
                "no answer within {} s",
                self.op_timeout.as_secs()
            ))),
        }
    }

    pub fn close(&self) {
        self.pool.close();
    }
}

/// A nullable jsonb column, read without panicking: a value `serde_json` cannot represent
/// (numbers beyond a double, written by another tool or an older version) is logged and read
/// as absent, so one such row can neither stall identity resolution nor break a timeline.
pub fn lenient_json(row: &tokio_postgres::Row, column: usize) -> Option<serde_json::Value> {
    match row.try_get::<_, Option<serde_json::Value>>(column) {
        Ok(value) => value,
        Err(err) => {
            tracing::warn!(column, error = %err, "unreadable JSON read as absent");
            None
        }
    }
}

/// Creates the database named in `url` when it does not exist (connecting to `postgres` to do so).
pub async fn ensure_database(url: &str, connect_timeout: Duration) -> anyhow::Result<()> {
    let mut target = tokio_postgres::Config::from_str(url).context("parsing the database URL")?;
    let name = target.get_dbname().unwrap_or("postgres").to_string();
    if name == "postgres" {
        return Ok(());
    }
    target.connect_timeout(connect_timeout);
    let mut admin = target.clone();
    admin.dbname("postgres");
    let (client, connection) = admin.connect(NoTls).await.with_context(|| {
        format!("connecting to PostgreSQL to check that database {name:?} exists")
    })?;
    let driver = tokio::spawn(connection);
    let exists = client
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
        .await?
        .is_some();
    if !exists {
        let sql = format!("CREATE DATABASE {}", quote_ident(&name));
        match client.batch_execute(&sql).await {
            Ok(()) => tracing::info!(database = %name, "created the database"),
            // Another instance created it first: a duplicate, or (racing) a catalog unique violation.
            Err(e)
                if e.code() == Some(&tokio_postgres::error::SqlState::DUPLICATE_DATABASE)
                    || e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) => {}
            Err(e) => return Err(e).with_context(|| format!("creating database {name:?}")),
        }
    }
    drop(client);
    let _ = driver.await;
    Ok(())
}

/// Quotes an SQL identifier (for the few statements, like CREATE DATABASE, that take no parameters).
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Whether something accepts TCP connections on `addr` within `timeout`.
pub async fn answers(addr: &str, timeout: Duration) -> bool {
    matches!(
        tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await,
        Ok(Ok(_))
    )
}
