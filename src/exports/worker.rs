//! File exports: the worker that takes pending exports and writes each as `dir/<id>/<file>` plus
//! `manifest.json`, the scheduled exports that refresh `dir/scheduled/<name>/` for BI tools to
//! poll, and `forget_erased`, which removes files that may hold an erased person. Every path is
//! built from ids and fixed names only; nothing a user typed reaches the file system. Files are
//! written under a temporary name and renamed into place, so a reader never sees half a file.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, SubsecRound, Utc};
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use uuid::Uuid;

use super::{store, ExportError, Format, What};
use crate::config::ScheduledExport;
use crate::db::Db;
use crate::query::QueryEngine;

/// How often an idle worker looks for pending exports.
const POLL: Duration = Duration::from_millis(250);

/// What was written: the data file's name (inside its folder), rows, bytes and digest.
pub struct Manifest {
    pub file: String,
    pub rows: i64,
    pub bytes: i64,
    pub sha256: String,
    pub json: Value,
}

/// A data file's name: what it holds and its format (`segment-<id>.parquet`).
fn data_file(what: &What, format: Format) -> String {
    match what {
        What::Segment(id) => format!("segment-{id}.{}", format.name()),
        other => format!("{}.{}", other.name(), format.name()),
    }
}

/// A column type in words BI users know.
fn type_name(t: &DataType) -> String {
    match t {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => "string".into(),
        DataType::Float64 => "double".into(),
        DataType::Int64 => "int64".into(),
        DataType::Boolean => "boolean".into(),
        DataType::Timestamp(_, Some(tz)) => format!("timestamp[us, tz={tz}]"),
        DataType::Timestamp(_, None) => "timestamp[us]".into(),
        DataType::List(item) | DataType::LargeList(item) => {
            format!("list<{}>", type_name(item.data_type()))
        }
        other => other.to_string(),
    }
}

fn schema_json(schema: &SchemaRef) -> Value {
    Value::Array(
        schema
            .fields()
            .iter()
            .map(|f| json!({"name": f.name(), "type": type_name(f.data_type()), "nullable": f.is_nullable()}))
            .collect(),
    )
}

/// Writes an export into `folder` (which must exist) as `<tmp>` then renames it to its data
/// file name; returns the manifest (not yet written).
async fn write_data(
    engine: &QueryEngine,
    what: &What,
    format: Format,
    folder: &Path,
    id: Uuid,
    created_at: DateTime<Utc>,
) -> Result<Manifest, ExportError> {
    let segment = match what {
        What::Segment(sid) => crate::segments::store::get(engine.db(), *sid)
            .await?
            .map(|s| json!({"id": s.id, "name": s.name, "evaluated_at": s.last_evaluated_at})),
        _ => None,
    };
    let mut chunks = super::Chunks::new(super::open(engine, what, None).await?, format)?;
    let file = data_file(what, format);
    let tmp = folder.join(format!(".{file}.{}.tmp", Uuid::new_v4().simple()));
    let mut hasher = Sha256::new();
    let mut bytes = 0i64;
    let written = async {
        let mut out = tokio::fs::File::create(&tmp).await?;
        while let Some(chunk) = chunks.next().await? {
            hasher.update(&chunk);
            bytes += chunk.len() as i64;
            out.write_all(&chunk).await?;
        }
        out.flush().await?;
        out.sync_all().await?;
        Ok::<_, ExportError>(())
    }
    .await;
    if let Err(err) = written {
        let _ = tokio::fs::remove_file(&tmp).await;
        return Err(err);
    }
    tokio::fs::rename(&tmp, folder.join(&file)).await?;
    let sha256 = hex::encode(hasher.finalize());
    let json = json!({
        "id": id,
        "what": what.name(),
        "format": format.name(),
        "file": file,
        "rows": chunks.rows(),
        "bytes": bytes,
        "sha256": sha256,
        "schema": schema_json(&chunks.schema()),
        "segment": segment,
        "created_at": created_at,
        "written_at": Utc::now().trunc_subsecs(6),
    });
    Ok(Manifest {
        file,
        rows: chunks.rows() as i64,
        bytes,
        sha256,
        json,
    })
}

/// Writes `manifest.json` atomically into `folder`.
async fn write_manifest(folder: &Path, manifest: &Manifest) -> Result<(), ExportError> {
    let tmp = folder.join(format!(".manifest.{}.tmp", Uuid::new_v4().simple()));
    let text = serde_json::to_vec_pretty(&manifest.json)
        .map_err(|e| ExportError::Io(std::io::Error::other(e)))?;
    tokio::fs::write(&tmp, text).await?;
    tokio::fs::rename(&tmp, folder.join("manifest.json")).await?;
    Ok(())
}

/// Runs one file export: written in a hidden folder, which is renamed to `dir/<id>` once the
/// data file and its manifest are complete.
pub async fn run_export(
    engine: &QueryEngine,
    dir: &Path,
    export: &store::FileExport,
) -> Result<Manifest, ExportError> {
    let what = What::parse(&export.what, export.segment_id)?;
    let format = Format::parse(&export.format).map_err(ExportError::Invalid)?;
    tokio::fs::create_dir_all(dir).await?;
    let tmp = dir.join(format!(".{}.tmp", export.id));
    let _ = tokio::fs::remove_dir_all(&tmp).await;
    tokio::fs::create_dir_all(&tmp).await?;
    let result = async {
        let manifest =
            write_data(engine, &what, format, &tmp, export.id, export.created_at).await?;
        write_manifest(&tmp, &manifest).await?;
        tokio::fs::rename(&tmp, dir.join(export.id.to_string())).await?;
        Ok(manifest)
    }
    .await;
    if result.is_err() {
        let _ = tokio::fs::remove_dir_all(&tmp).await;
    }
    result
}

/// The worker: takes pending exports one at a time until shutdown.
pub async fn run(
    engine: Arc<QueryEngine>,
    dir: PathBuf,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let next = store::claim_next(engine.db()).await;
        match next {
            Ok(Some(export)) => {
                let outcome = run_export(&engine, &dir, &export).await;
                let recorded = match &outcome {
                    Ok(m) => {
                        tracing::info!(export = %export.id, rows = m.rows, bytes = m.bytes, "file export written");
                        store::finish_done(
                            engine.db(),
                            export.id,
                            &format!("{}/{}", export.id, m.file),
                            m.rows,
                            m.bytes,
                            &m.sha256,
                        )
                        .await
                    }
                    Err(err) => {
                        tracing::warn!(export = %export.id, error = %err, "file export failed");
                        store::finish_failed(engine.db(), export.id, &err.to_string()).await
                    }
                };
                if let Err(err) = recorded {
                    tracing::warn!(export = %export.id, error = %err, "recording a file export's outcome failed");
                }
                continue;
            }
            Ok(None) => {}
            Err(err) => tracing::warn!(error = %err, "looking for pending file exports failed"),
        }
        tokio::select! {
            _ = tokio::time::sleep(POLL) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// Checks a scheduled export's declaration; the folder name comes from configuration but is
/// still held to letters, digits, `_` and `-`.
pub fn check_schedule(schedule: &ScheduledExport) -> Result<(What, Format), ExportError> {
    let name = &schedule.name;
    if name.is_empty()
        || name.len() > 100
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(ExportError::Invalid(format!(
            "scheduled export name {name:?} must be 1 to 100 letters, digits, `_` or `-`"
        )));
    }
    if schedule.every_secs == 0 {
        return Err(ExportError::Invalid(format!(
            "scheduled export {name:?}: `every_secs` must be at least 1"
        )));
    }
    let what = What::parse(&schedule.what, schedule.segment_id)?;
    let format = Format::parse(&schedule.format).map_err(ExportError::Invalid)?;
    Ok((what, format))
}

/// Refreshes one scheduled export now: the new data file replaces the old one by rename, then
/// the manifest does, so a poller sees either the old pair or the new data with its manifest
/// one rename later.
pub async fn refresh_scheduled(
    engine: &QueryEngine,
    dir: &Path,
    schedule: &ScheduledExport,
) -> Result<Manifest, ExportError> {
    let (what, format) = check_schedule(schedule)?;
    let folder = dir.join("scheduled").join(&schedule.name);
    tokio::fs::create_dir_all(&folder).await?;
    let now = Utc::now().trunc_subsecs(6);
    let mut manifest = write_data(engine, &what, format, &folder, Uuid::now_v7(), now).await?;
    manifest.json["schedule"] = json!(schedule.name);
    write_manifest(&folder, &manifest).await?;
    Ok(manifest)
}

/// Runs a scheduled export every `every_secs` (the first right away) until shutdown.
pub async fn run_schedule(
    engine: Arc<QueryEngine>,
    dir: PathBuf,
    schedule: ScheduledExport,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let every = Duration::from_secs(schedule.every_secs.max(1));
    loop {
        match refresh_scheduled(&engine, &dir, &schedule).await {
            Ok(m) => {
                tracing::info!(schedule = %schedule.name, rows = m.rows, "scheduled export refreshed")
            }
            Err(err) => {
                tracing::warn!(schedule = %schedule.name, error = %err, "scheduled export failed")
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// Removes finished export files that may contain a person erased now: every file export
/// finished at or after `first_seen` (the person's earliest event; older files cannot hold
/// them) and every scheduled folder's files (rewritten, without them, at the next refresh).
/// Their rows turn `failed` with the reason. Returns how many exports were removed.
pub async fn forget_erased(
    db: &Db,
    dir: &Path,
    first_seen: DateTime<Utc>,
) -> Result<usize, ExportError> {
    let ids = store::done_since(db, first_seen).await?;
    for id in &ids {
        match tokio::fs::remove_dir_all(dir.join(id.to_string())).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
    }
    store::mark_removed(
        db,
        &ids,
        "removed: the file may have contained a profile that was erased; export again",
    )
    .await?;
    let scheduled = dir.join("scheduled");
    if let Ok(mut folders) = tokio::fs::read_dir(&scheduled).await {
        while let Some(folder) = folders.next_entry().await? {
            if let Ok(mut files) = tokio::fs::read_dir(folder.path()).await {
                while let Some(file) = files.next_entry().await? {
                    let _ = tokio::fs::remove_file(file.path()).await;
                }
            }
        }
    }
    Ok(ids.len())
}
