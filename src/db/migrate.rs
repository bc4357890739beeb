//! Migrations: the plain SQL files of `sql/`, compiled into the binary, applied in order inside
//! transactions, recorded in `kizuna_migrations`, serialized across instances by an advisory lock.

use anyhow::Context;
use sha2::{Digest, Sha256};

use super::Db;

/// Every file of `sql/`, in order. A unit test checks this list against the folder.
pub const MIGRATIONS: &[(&str, &str)] = &[
    ("0001_init", include_str!("../../sql/0001_init.sql")),
    ("0002_identity", include_str!("../../sql/0002_identity.sql")),
    ("0003_segments", include_str!("../../sql/0003_segments.sql")),
    (
        "0004_computed_traits",
        include_str!("../../sql/0004_computed_traits.sql"),
    ),
    (
        "0005_event_profiles",
        include_str!("../../sql/0005_event_profiles.sql"),
    ),
    ("0007_exports", include_str!("../../sql/0007_exports.sql")),
    ("0008_privacy", include_str!("../../sql/0008_privacy.sql")),
    (
        "0009_identities_without_foreign_keys",
        include_str!("../../sql/0009_identities_without_foreign_keys.sql"),
    ),
    (
        "0010_events_without_source_foreign_key",
        include_str!("../../sql/0010_events_without_source_foreign_key.sql"),
    ),
    (
        "0011_identities_byte_collation",
        include_str!("../../sql/0011_identities_byte_collation.sql"),
    ),
    (
        "0012_reads_see_pending_messages",
        include_str!("../../sql/0012_reads_see_pending_messages.sql"),
    ),
];

/// An arbitrary but fixed key for `pg_advisory_lock`.
const MIGRATION_LOCK: i64 = 0x6b697a756e61; // "kizuna"

/// Applies pending migrations; returns the versions applied now.
pub async fn run(db: &Db) -> anyhow::Result<Vec<String>> {
    let mut client = db.conn().await.context("connecting to run migrations")?;
    // Everything, the bookkeeping table included, happens under the lock, so instances starting
    // together apply each migration once.
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    let result = async {
        client
            .batch_execute(
                "CREATE TABLE IF NOT EXISTS kizuna_migrations (
                    version text PRIMARY KEY,
                    checksum text NOT NULL,
                    applied_at timestamptz NOT NULL DEFAULT now()
                )",
            )
            .await
            .context("creating kizuna_migrations")?;
        apply_pending(&mut client).await
    }
    .await;
    client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await?;
    result
}

async fn apply_pending(client: &mut deadpool_postgres::Object) -> anyhow::Result<Vec<String>> {
    let rows = client
        .query("SELECT version, checksum FROM kizuna_migrations", &[])
        .await?;
    let applied: std::collections::HashMap<String, String> =
        rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    let mut now_applied = Vec::new();
    for (version, sql) in MIGRATIONS {
        let checksum = hex::encode(Sha256::digest(sql.as_bytes()));
        if let Some(previous) = applied.get(*version) {
            if previous != &checksum {
                tracing::warn!(%version, "an applied migration changed since it was applied");
            }
            continue;
        }
        let tx = client.transaction().await?;
        tx.batch_execute(sql)
            .await
            .with_context(|| format!("applying migration {version}"))?;
        tx.execute(
            "INSERT INTO kizuna_migrations (version, checksum) VALUES ($1, $2)",
            &[version, &checksum],
        )
        .await?;
        tx.commit().await?;
        tracing::info!(%version, "applied migration");
        now_applied.push(version.to_string());
    }
    Ok(now_applied)
}

/// Whether every known migration is recorded (for `/readyz`).
pub async fn all_applied(client: &tokio_postgres::Client) -> Result<bool, tokio_postgres::Error> {
    let row = client
        .query_one("SELECT count(*) FROM kizuna_migrations", &[])
        .await?;
    let count: i64 = row.get(0);
    Ok(count as usize >= MIGRATIONS.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_sql_file_is_listed_in_order() {
        let mut files: Vec<String> = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/sql"))
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| {
                e.file_name()
                    .to_string_lossy()
                    .trim_end_matches(".sql")
                    .to_string()
            })
            .collect();
        files.sort();
        let listed: Vec<String> = MIGRATIONS.iter().map(|(v, _)| v.to_string()).collect();
        assert_eq!(files, listed);
    }
}
