use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::helpers::{problem, spawn_app, spawn_app_with, Options};

#[tokio::test]
async fn health_readiness_and_metrics_answer() {
    let app = spawn_app().await;
    let health = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let ready = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    let metrics = app.client.get(app.url("/metrics")).send().await.unwrap();
    assert!(metrics.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let text = metrics.text().await.unwrap();
    assert!(
        text.contains(
            "kizuna_http_requests_total{method=\"GET\",route=\"/readyz\",status=\"200\"} 1"
        ),
        "{text}"
    );
    assert!(text.contains("kizuna_events_ingested_total 0"));
}

#[tokio::test]
async fn the_openapi_document_lists_every_endpoint() {
    let app = spawn_app().await;
    let doc: Value = app
        .client
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths = doc["paths"].as_object().unwrap();
    for path in [
        "/v1/batch",
        "/v1/identify",
        "/v1/track",
        "/v1/page",
        "/v1/screen",
        "/v1/group",
        "/v1/alias",
        "/v1/sources",
        "/v1/sources/{id}",
        "/v1/api-keys",
        "/v1/api-keys/{id}",
        "/healthz",
        "/readyz",
        "/metrics",
        "/openapi.json",
    ] {
        assert!(paths.contains_key(path), "{path} is documented");
    }
}

#[tokio::test]
async fn unknown_routes_and_methods_are_problems_too() {
    let app = spawn_app().await;
    problem(
        app.client.get(app.url("/v2/nothing")).send().await.unwrap(),
        404,
    )
    .await;
    problem(
        app.client.get(app.url("/v1/batch")).send().await.unwrap(),
        405,
    )
    .await;
}

#[tokio::test]
async fn a_public_bind_without_an_admin_token_is_refused() {
    let mut settings = kizuna::config::Settings::load().unwrap();
    settings.server.bind = "0.0.0.0:0".into();
    settings.auth.admin_token = String::new();
    let err = kizuna::startup::Application::build(settings)
        .await
        .err()
        .expect("refused");
    assert!(err.to_string().contains("admin token"), "{err}");
}

#[tokio::test]
async fn when_the_database_goes_away_ingest_answers_503_promptly_and_recovers() {
    let app = spawn_app_with(Options { via_proxy: true }, |_| {}).await;
    let (_, key) = app.create_source("Web", "web").await;
    let body = json!({"batch": [{"type": "track", "userId": "u", "event": "E"}]});
    assert_eq!(
        app.post_tracking("/v1/batch", &key, &body).await.status(),
        200
    );
    let proxy = app.proxy.as_ref().unwrap();

    for fault in ["cut", "blackhole"] {
        if fault == "cut" {
            proxy.cut()
        } else {
            proxy.blackhole()
        }
        let started = Instant::now();
        let response = app.post_tracking("/v1/batch", &key, &body).await;
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{fault}: answered in {:?}",
            started.elapsed()
        );
        let retry_after: u64 = response.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(retry_after > 0, "SDKs are told when to retry");
        problem(response, 503).await;
        let ready = app.client.get(app.url("/readyz")).send().await.unwrap();
        problem(ready, 503).await;

        proxy.restore();
        let mut recovered = false;
        for _ in 0..50 {
            if app.post_tracking("/v1/batch", &key, &body).await.status() == 200 {
                recovered = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert!(recovered, "{fault}: ingest recovers without a restart");
    }
    assert_eq!(app.count_events().await, 3);
}

#[tokio::test]
async fn two_instances_starting_at_once_migrate_one_database_once() {
    let db_name = format!("kizuna_test_{}", uuid::Uuid::new_v4().simple());
    let build = || {
        let mut settings = kizuna::config::Settings::load().unwrap();
        settings.database.url = format!(
            "postgres://postgres@{}/{db_name}",
            crate::helpers::pg_addr()
        );
        settings.server.bind = "127.0.0.1:0".into();
        settings.server.workers = 1;
        kizuna::startup::Application::build(settings)
    };
    let (a, b) = tokio::join!(build(), build());
    let (a, b) = (
        a.expect("first instance starts"),
        b.expect("second instance starts"),
    );
    let client = crate::helpers::pg_client(&db_name).await.unwrap();
    let versions: i64 = client
        .query_one("SELECT count(*) FROM kizuna_migrations", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(versions as usize, kizuna::db::migrate::MIGRATIONS.len());
    drop((a.handle().stop(false), b.handle().stop(false)));
    drop((a, b, client));
    crate::helpers::drop_database(&db_name).await;
}
