//! Exports: the three formats as a BI tool reads them, `fields`, the 400s, the never-evaluated
//! segment, file exports with their manifest, scheduled exports, and the scope.

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use datafusion::arrow::datatypes::{DataType, TimeUnit};
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use reqwest::Method;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::helpers::{problem, spawn_app, spawn_app_with, Options, TestApp};

const TRICKY_NAME: &str = "Ada, \"the first\"\nLovelace 🎉";

/// ada: pro, 36, VIP, a name with a comma, quotes, a newline and an emoji, two orders.
/// bob: free, 20. cy: only an anonymous id and a page view.
async fn seed(app: &TestApp) {
    let (_, key) = app.create_source("Shop", "web").await;
    let batch = json!({"batch": [
        {"type": "identify", "userId": "ada", "traits": {"email": "ada@example.com", "name": TRICKY_NAME, "plan": "pro", "age": 36, "vip": true, "address": {"city": "London"}}, "timestamp": "2026-01-01T10:00:00Z"},
        {"type": "identify", "userId": "bob", "traits": {"email": "bob@example.com", "plan": "free", "age": 20}, "timestamp": "2026-01-02T10:00:00Z"},
        {"type": "page", "anonymousId": "cy-device", "name": "Home", "timestamp": "2026-01-03T10:00:00Z"},
        {"type": "track", "userId": "ada", "event": "Order Completed", "properties": {"revenue": 10}, "timestamp": "2026-01-04T10:00:00Z"},
        {"type": "track", "userId": "ada", "event": "Order Completed", "properties": {"revenue": 32.5}, "timestamp": "2026-01-05T10:00:00Z"},
    ]});
    assert_eq!(
        app.post_tracking("/v1/batch", &key, &batch).await.status(),
        200
    );
    app.settle().await;
}

async fn get(app: &TestApp, path: &str) -> reqwest::Response {
    app.admin(Method::GET, path).send().await.unwrap()
}

async fn ndjson(app: &TestApp, path: &str) -> Vec<Value> {
    let response = get(app, path).await;
    assert_eq!(response.status(), 200, "GET {path}");
    assert_eq!(response.headers()["content-type"], "application/x-ndjson");
    let text = response.text().await.unwrap();
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn by_user<'a>(rows: &'a [Value], user: &str) -> &'a Value {
    rows.iter()
        .find(|r| r["user_id"] == user)
        .unwrap_or_else(|| panic!("no row for {user}"))
}

async fn create_segment(app: &TestApp, definition: Value) -> String {
    let response = app
        .admin(Method::POST, "/v1/segments")
        .json(&json!({"name": "Pros", "definition": definition}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let body: Value = response.json().await.unwrap();
    body["id"].as_str().unwrap().to_string()
}

fn temp_dir() -> PathBuf {
    std::env::temp_dir().join(format!("kizuna-exports-{}", uuid::Uuid::new_v4().simple()))
}

#[tokio::test]
async fn ndjson_has_one_profile_a_line_with_identities_typed_traits_and_timestamps() {
    let app = spawn_app().await;
    seed(&app).await;

    let rows = ndjson(&app, "/v1/exports/profiles?format=ndjson").await;

    assert_eq!(rows.len(), 3);
    let ada = by_user(&rows, "ada");
    assert_eq!(ada["email"], "ada@example.com");
    assert_eq!(ada["trait_plan"], "pro");
    assert_eq!(ada["trait_age"], 36.0);
    assert_eq!(ada["trait_vip"], true);
    assert_eq!(ada["trait_address_city"], "London");
    assert_eq!(ada["trait_name"], TRICKY_NAME);
    assert_eq!(ada["event_count"], 3);
    assert!(ada["first_seen"]
        .as_str()
        .unwrap()
        .starts_with("2026-01-01T10:00:00"));
    let traits: Value = serde_json::from_str(ada["traits"].as_str().unwrap()).unwrap();
    assert_eq!(traits["address"]["city"], "London");
    let profile = app.lookup("user_id", "ada").await;
    assert_eq!(ada["profile_id"], profile["id"]);
    let cy = rows.iter().find(|r| r["user_id"].is_null()).unwrap();
    assert!(cy["email"].is_null() && cy["trait_plan"].is_null());
}

#[tokio::test]
async fn csv_has_a_header_and_quotes_commas_quotes_and_newlines() {
    let app = spawn_app().await;
    seed(&app).await;

    let response = get(
        &app,
        "/v1/exports/profiles?format=csv&fields=user_id,trait_name",
    )
    .await;

    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "text/csv; charset=utf-8"
    );
    // Streamed as it is encoded: chunked, so no length is known up front.
    assert!(response.headers().get("content-length").is_none());
    let disposition = response.headers()["content-disposition"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        disposition.starts_with("attachment; filename=\"profiles-")
            && disposition.ends_with(".csv\""),
        "{disposition}"
    );
    let text = response.text().await.unwrap();
    assert!(text.starts_with("user_id,trait_name\n"), "{text}");
    assert!(
        text.contains("ada,\"Ada, \"\"the first\"\"\nLovelace 🎉\"\n"),
        "{text}"
    );
    assert!(text.contains("bob,\n"), "{text}");
}

#[tokio::test]
async fn parquet_has_real_types_and_every_profile() {
    let app = spawn_app().await;
    seed(&app).await;

    let response = get(&app, "/v1/exports/profiles?format=parquet").await;

    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "application/vnd.apache.parquet"
    );
    let bytes: Bytes = response.bytes().await.unwrap();
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes).unwrap();
    let schema = reader.schema().clone();
    let rows: usize = reader.build().unwrap().map(|b| b.unwrap().num_rows()).sum();
    assert_eq!(rows, 3);
    let type_of = |name: &str| schema.field_with_name(name).unwrap().data_type().clone();
    let utc = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
    assert_eq!(type_of("first_seen"), utc);
    assert_eq!(type_of("last_seen"), utc);
    assert_eq!(type_of("trait_age"), DataType::Float64);
    assert_eq!(type_of("trait_vip"), DataType::Boolean);
    assert_eq!(type_of("event_count"), DataType::Int64);
    assert_eq!(type_of("email"), DataType::Utf8);
}

#[tokio::test]
async fn every_computed_trait_is_a_column() {
    let app = spawn_app().await;
    seed(&app).await;
    let declared = app
        .admin(Method::POST, "/v1/computed-traits")
        .json(&json!({"name": "revenue", "kind": "sum", "event": "Order Completed", "property": "revenue"}))
        .send()
        .await
        .unwrap();
    assert_eq!(declared.status(), 201);

    let rows = ndjson(
        &app,
        "/v1/exports/profiles?format=ndjson&fields=user_id,computed_revenue",
    )
    .await;

    assert_eq!(by_user(&rows, "ada")["computed_revenue"], 42.5);
    assert!(by_user(&rows, "bob")["computed_revenue"].is_null());
}

#[tokio::test]
async fn the_customer_health_built_ins_are_columns_too() {
    let app = spawn_app().await;
    seed(&app).await;

    let rows = ndjson(
        &app,
        "/v1/exports/profiles?format=ndjson&fields=user_id,computed_clv,computed_orders,computed_nps_group",
    )
    .await;

    assert_eq!(by_user(&rows, "ada")["computed_clv"], 42.5);
    assert_eq!(by_user(&rows, "ada")["computed_orders"], 2);
    assert!(by_user(&rows, "ada")["computed_nps_group"].is_null());
    assert!(by_user(&rows, "bob")["computed_clv"].is_null());
}

#[tokio::test]
async fn unknown_formats_and_fields_are_400s_naming_them() {
    let app = spawn_app().await;
    seed(&app).await;

    let format = problem(get(&app, "/v1/exports/profiles?format=xlsx").await, 400).await;
    let field = problem(
        get(
            &app,
            "/v1/exports/profiles?format=csv&fields=email,shoe_size",
        )
        .await,
        400,
    )
    .await;
    let since = problem(get(&app, "/v1/exports/events?since=yesterday").await, 400).await;

    assert!(format["detail"].as_str().unwrap().contains("xlsx"));
    assert!(field["detail"].as_str().unwrap().contains("shoe_size"));
    assert!(since["detail"].as_str().unwrap().contains("since"));
}

#[tokio::test]
async fn events_stream_with_their_profile_and_since_cuts_the_start() {
    let app = spawn_app().await;
    seed(&app).await;
    let ada = app.lookup("user_id", "ada").await;

    let all = ndjson(&app, "/v1/exports/events?format=ndjson").await;
    let recent = ndjson(
        &app,
        "/v1/exports/events?format=ndjson&since=2026-01-04T00:00:00Z",
    )
    .await;

    assert_eq!(all.len(), 5);
    assert_eq!(recent.len(), 2);
    assert!(recent
        .iter()
        .all(|e| e["profile_id"] == ada["id"] && e["event"] == "Order Completed"));
}

#[tokio::test]
async fn a_segment_is_exported_only_once_evaluated_with_entered_at() {
    let app = spawn_app().await;
    seed(&app).await;
    let id = create_segment(&app, json!({"trait": "plan", "op": "eq", "value": "pro"})).await;
    let path = format!("/v1/segments/{id}/export?format=ndjson");

    let before = problem(get(&app, &path).await, 409).await;
    let evaluated = app
        .admin(Method::POST, &format!("/v1/segments/{id}/evaluate"))
        .send()
        .await
        .unwrap();
    assert_eq!(evaluated.status(), 200);
    let run: Value = evaluated.json().await.unwrap();
    let rows = ndjson(&app, &path).await;

    assert!(before["detail"].as_str().unwrap().contains("evaluate"));
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["user_id"], "ada");
    let entered =
        chrono::DateTime::parse_from_rfc3339(rows[0]["entered_at"].as_str().unwrap()).unwrap();
    let evaluated_at =
        chrono::DateTime::parse_from_rfc3339(run["evaluated_at"].as_str().unwrap()).unwrap();
    assert_eq!(entered, evaluated_at);
    let missing = format!("/v1/segments/{}/export", uuid::Uuid::now_v7());
    problem(get(&app, &missing).await, 404).await;
}

#[tokio::test]
async fn exports_need_the_exports_read_scope() {
    let app = spawn_app().await;
    let created = app
        .admin(Method::POST, "/v1/api-keys")
        .json(&json!({"name": "crm", "scopes": ["profiles:read", "segments:read"]}))
        .send()
        .await
        .unwrap();
    let token = created.json::<Value>().await.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_string();
    let id = uuid::Uuid::now_v7();

    for path in [
        "/v1/exports/profiles".to_string(),
        "/v1/exports/events".to_string(),
        format!("/v1/segments/{id}/export"),
        format!("/v1/exports/{id}"),
    ] {
        let response = app
            .client
            .get(app.url(&path))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        problem(response, 403).await;
    }
    // Not even a broken body is read without the scope.
    let response = app
        .client
        .post(app.url("/v1/exports"))
        .bearer_auth(&token)
        .body("{not json")
        .send()
        .await
        .unwrap();
    problem(response, 403).await;
    let anonymous = app
        .client
        .get(app.url("/v1/exports/profiles"))
        .send()
        .await
        .unwrap();
    problem(anonymous, 401).await;
}

async fn wait_until_finished(app: &TestApp, id: &str) -> Value {
    for _ in 0..200 {
        let status = app.get_json(&format!("/v1/exports/{id}")).await;
        if status["status"] == "done" || status["status"] == "failed" {
            return status;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("export {id} did not finish in 10 s");
}

#[tokio::test]
async fn a_file_export_is_written_atomically_with_its_manifest() {
    let dir = temp_dir();
    let app = spawn_app_with(Options { via_proxy: false }, |s| {
        s.exports.dir = dir.clone()
    })
    .await;
    seed(&app).await;

    let response = app
        .admin(Method::POST, "/v1/exports")
        .json(&json!({"what": "profiles", "format": "parquet"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let id = response.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let status = wait_until_finished(&app, &id).await;

    assert_eq!(status["status"], "done", "{status}");
    assert_eq!(status["rows"], 3);
    assert_eq!(status["file"], format!("{id}/profiles.parquet"));
    let data = std::fs::read(dir.join(status["file"].as_str().unwrap())).unwrap();
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(dir.join(&id).join("manifest.json")).unwrap())
            .unwrap();
    assert_eq!(manifest["rows"], 3);
    assert_eq!(manifest["bytes"], data.len());
    assert_eq!(manifest["sha256"], hex::encode(Sha256::digest(&data)));
    assert_eq!(manifest["sha256"], status["sha256"]);
    let first_seen = manifest["schema"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "first_seen")
        .unwrap();
    assert_eq!(first_seen["type"], "timestamp[us, tz=UTC]");
    // Nothing but the finished folder: no temporary names left behind.
    let entries: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    assert_eq!(entries, vec![id.clone()]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_segment_file_export_names_its_segment_and_waits_for_an_evaluation() {
    let dir = temp_dir();
    let app = spawn_app_with(Options { via_proxy: false }, |s| {
        s.exports.dir = dir.clone()
    })
    .await;
    seed(&app).await;
    let segment = create_segment(&app, json!({"trait": "plan", "op": "eq", "value": "pro"})).await;
    let body = json!({"what": "segment", "format": "csv", "segment_id": segment});

    let early = app
        .admin(Method::POST, "/v1/exports")
        .json(&body)
        .send()
        .await
        .unwrap();
    problem(early, 409).await;
    app.admin(Method::POST, &format!("/v1/segments/{segment}/evaluate"))
        .send()
        .await
        .unwrap();
    let response = app
        .admin(Method::POST, "/v1/exports")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let id = response.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let status = wait_until_finished(&app, &id).await;

    assert_eq!(status["status"], "done", "{status}");
    assert_eq!(status["rows"], 1);
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(dir.join(&id).join("manifest.json")).unwrap())
            .unwrap();
    assert_eq!(manifest["segment"]["id"], segment);
    assert_eq!(manifest["segment"]["name"], "Pros");
    let csv = std::fs::read_to_string(dir.join(status["file"].as_str().unwrap())).unwrap();
    assert!(csv.lines().next().unwrap().ends_with(",entered_at"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn no_field_of_a_file_export_can_name_a_path() {
    let app = spawn_app().await;

    for body in [
        json!({"what": "../../etc/passwd", "format": "csv"}),
        json!({"what": "profiles", "format": "../csv"}),
        json!({"what": "segment", "format": "csv", "segment_id": "../../tmp"}),
        json!({"what": "profiles", "format": "csv", "file": "/tmp/x.csv"}),
        json!({"what": "segment", "format": "csv"}),
    ] {
        let response = app
            .admin(Method::POST, "/v1/exports")
            .json(&body)
            .send()
            .await
            .unwrap();
        problem(response, 400).await;
    }
    let unknown = format!("/v1/exports/{}", uuid::Uuid::now_v7());
    problem(get(&app, &unknown).await, 404).await;
    problem(get(&app, "/v1/exports/..%2F..%2Fetc").await, 400).await;
}

#[tokio::test]
async fn a_scheduled_export_refreshes_its_folder() {
    let dir = temp_dir();
    let app = spawn_app_with(Options { via_proxy: false }, |s| {
        s.exports.dir = dir.clone();
        s.exports.schedules = vec![kizuna::config::ScheduledExport {
            name: "all_profiles".into(),
            what: "profiles".into(),
            format: "ndjson".into(),
            segment_id: None,
            every_secs: 1,
        }];
    })
    .await;
    seed(&app).await;
    let folder = dir.join("scheduled").join("all_profiles");

    let mut lines = 0;
    for _ in 0..100 {
        if let Ok(text) = std::fs::read_to_string(folder.join("profiles.ndjson")) {
            lines = text.lines().count();
            if lines == 3 {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    assert_eq!(lines, 3);
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(folder.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["schedule"], "all_profiles");
    drop(app);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn erasing_a_person_removes_the_export_files_that_may_hold_them() {
    let dir = temp_dir();
    let app = spawn_app_with(Options { via_proxy: false }, |s| {
        s.exports.dir = dir.clone()
    })
    .await;
    seed(&app).await;
    let response = app
        .admin(Method::POST, "/v1/exports")
        .json(&json!({"what": "profiles", "format": "csv"}))
        .send()
        .await
        .unwrap();
    let id = response.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(wait_until_finished(&app, &id).await["status"], "done");
    let settings = kizuna::config::Settings::load().unwrap();
    let url = format!(
        "postgres://postgres@{}/{}",
        crate::helpers::pg_addr(),
        app.db_name
    );
    let db = kizuna::db::Db::connect(&settings.database, &url).unwrap();

    // Someone first seen after the export finished cannot be in it; ada can.
    let later = chrono::Utc::now() + chrono::Duration::hours(1);
    let untouched = kizuna::exports::worker::forget_erased(&db, &dir, later)
        .await
        .unwrap();
    let ada = app.lookup("user_id", "ada").await;
    let erased = app
        .admin(
            Method::DELETE,
            &format!("/v1/profiles/{}", ada["id"].as_str().unwrap()),
        )
        .send()
        .await
        .unwrap();

    assert_eq!(untouched, 0);
    assert_eq!(erased.status(), 204);
    assert!(!dir.join(&id).exists());
    let status = app.get_json(&format!("/v1/exports/{id}")).await;
    assert_eq!(status["status"], "failed");
    assert!(status["reason"].as_str().unwrap().contains("erased"));
    let _ = std::fs::remove_dir_all(&dir);
}
