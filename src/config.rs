//! Settings: `config/default.toml`, then `config/$KIZUNA_ENV.toml`, then `KIZUNA__SECTION__KEY`
//! environment variables; `DATABASE_URL` wins for the database URL.

use std::path::{Path, PathBuf};

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub server: ServerSettings,
    pub database: DatabaseSettings,
    pub auth: AuthSettings,
    pub ingest: IngestSettings,
    pub identity: IdentitySettings,
    pub query: QuerySettings,
    pub log: LogSettings,
    pub exports: ExportSettings,
    pub health: crate::health::HealthSettings,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuerySettings {
    /// Seconds between scheduled computed-trait refreshes and segment evaluations; 0 = off.
    pub schedule_every_secs: u64,
    /// Computed traits declared in configuration.
    pub computed_traits: Vec<serde_json::Value>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportSettings {
    /// Where file exports (one folder per export id) and scheduled exports are written.
    pub dir: PathBuf,
    /// Exports refreshed on a schedule into `dir/scheduled/<name>/`, for BI tools to poll.
    pub schedules: Vec<ScheduledExport>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduledExport {
    /// Folder name under `dir/scheduled/`: letters, digits, `_` and `-` only.
    pub name: String,
    /// `profiles`, `events` or `segment`.
    pub what: String,
    /// `csv`, `parquet` or `ndjson`.
    pub format: String,
    /// The segment, when `what = "segment"`.
    pub segment_id: Option<uuid::Uuid>,
    /// Seconds between refreshes.
    pub every_secs: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentitySettings {
    /// Whether this instance runs the identity resolver.
    pub enabled: bool,
    /// Identifier kinds, highest priority first; `external` stands for unlisted external id types.
    pub priority: Vec<String>,
    /// Extra values that never identify anyone.
    pub blocked_values: Vec<String>,
    /// Traits that keep their earliest value.
    pub set_once_traits: Vec<String>,
    /// Limit for kinds not listed in `limits`.
    pub default_limit: usize,
    /// Per-profile limits by identifier kind.
    pub limits: std::collections::BTreeMap<String, usize>,
    /// Events resolved per transaction.
    pub batch_size: i64,
    /// Milliseconds the resolver naps when idle.
    pub poll_interval_ms: u64,
    /// Milliseconds a profile read waits for the resolver to take acknowledged messages it would
    /// otherwise miss (on_read.rs); 0 reads what is resolved.
    pub read_wait_ms: u64,
    /// While ingest stores messages faster than the resolver clears them, the resolver rests
    /// this many times as long as each batch took, leaving the CPU to ingest (reads do not wait
    /// for the backlog); 0 never rests.
    pub busy_rest: f64,
    /// ... unless the oldest message waiting for resolution is this many milliseconds old.
    pub max_lag_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    /// Address the HTTP API listens on.
    pub bind: String,
    /// Worker threads; 0 means one per core.
    pub workers: usize,
    /// Seconds in-flight requests get to finish after a shutdown signal.
    pub shutdown_timeout_secs: u64,
    /// Seconds a request may take before it is answered 503 + Retry-After; 0 = no limit.
    pub request_timeout_secs: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSettings {
    /// Empty: 127.0.0.1:5432 if it answers, else the embedded cluster.
    pub url: String,
    pub pool_size: usize,
    pub connect_timeout_secs: u64,
    pub acquire_timeout_secs: u64,
    pub statement_timeout_secs: u64,
    pub embedded_dir: PathBuf,
    /// Where an unconfigured Kizuna looks for a local PostgreSQL before starting its own.
    pub probe_addr: String,
    /// Requests that may wait for a pooled connection; beyond it 503 at once. 0 = unbounded.
    pub max_waiting: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSettings {
    /// Bootstrap admin token; empty disables it.
    pub admin_token: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestSettings {
    pub max_message_bytes: usize,
    pub max_request_bytes: usize,
    pub max_batch_messages: usize,
    pub max_message_id_chars: usize,
    pub source_cache_ttl_secs: u64,
    /// Sustained tracking requests a second per source (write key); 0 = no limit.
    pub rate_limit_per_sec: u32,
    /// Tracking requests a source may send at once above the sustained rate.
    pub rate_limit_burst: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    pub format: LogFormat,
    pub level: String,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

impl Settings {
    /// Loads the layered configuration from `dir` (normally `./config`).
    pub fn load_from(dir: &Path) -> Result<Settings, config::ConfigError> {
        let env = std::env::var("KIZUNA_ENV").unwrap_or_default();
        let mut builder = config::Config::builder()
            .add_source(config::File::from_str(
                include_str!("../config/default.toml"),
                config::FileFormat::Toml,
            ))
            .add_source(config::File::from(dir.join("default.toml")).required(false));
        if !env.is_empty() {
            builder = builder
                .add_source(config::File::from(dir.join(format!("{env}.toml"))).required(false));
        }
        builder = builder.add_source(
            config::Environment::with_prefix("KIZUNA")
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true),
        );
        if let Ok(url) = std::env::var("DATABASE_URL") {
            if !url.is_empty() {
                builder = builder.set_override("database.url", url)?;
            }
        }
        builder.build()?.try_deserialize()
    }

    /// The configuration as `kizuna` sees it from the current directory.
    pub fn load() -> Result<Settings, config::ConfigError> {
        Settings::load_from(Path::new("config"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_built_in_defaults_parse() {
        let settings = Settings::load_from(Path::new("/nonexistent")).unwrap();
        assert_eq!(settings.server.bind, "127.0.0.1:8080");
        assert_eq!(settings.ingest.max_batch_messages, 2500);
    }

    #[test]
    fn the_health_section_matches_the_built_in_health_defaults() {
        let settings = Settings::load_from(Path::new("/nonexistent")).unwrap();
        assert_eq!(settings.health, crate::health::HealthSettings::default());
    }
}
