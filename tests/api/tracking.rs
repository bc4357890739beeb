use std::io::Write;

use serde_json::{json, Value};

use crate::helpers::{problem, spawn_app, TestApp};

async fn stored(app: &TestApp, sql: &str) -> Vec<tokio_postgres::Row> {
    app.db().await.query(sql, &[]).await.unwrap()
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(bytes).unwrap();
    gz.finish().unwrap()
}

#[tokio::test]
async fn each_single_call_path_stores_one_message_of_its_type() {
    let app = spawn_app().await;
    let (_, key) = app.create_source("Web", "web").await;
    let calls = [
        (
            "/v1/identify",
            json!({"userId": "u1", "traits": {"email": "ada@example.com"}}),
        ),
        (
            "/v1/track",
            json!({"userId": "u1", "event": "Order Completed", "properties": {"revenue": 42.5}}),
        ),
        ("/v1/page", json!({"anonymousId": "a1", "name": "Home"})),
        ("/v1/screen", json!({"userId": "u1", "name": "Settings"})),
        (
            "/v1/group",
            json!({"userId": "u1", "groupId": "acme", "traits": {"plan": "pro"}}),
        ),
        ("/v1/alias", json!({"previousId": "a1", "userId": "u1"})),
    ];
    for (path, body) in &calls {
        let response = app.post_tracking(path, &key, body).await;
        assert_eq!(response.status(), 200, "{path}");
        assert_eq!(
            response.json::<Value>().await.unwrap(),
            json!({"success": true})
        );
    }
    let rows = stored(&app, "SELECT type, event, name, user_id, anonymous_id, group_id, previous_id, properties, traits FROM events ORDER BY seq").await;
    let types: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(
        types,
        ["identify", "track", "page", "screen", "group", "alias"]
    );
    assert_eq!(rows[0].get::<_, Value>(8)["email"], "ada@example.com");
    assert_eq!(
        rows[1].get::<_, Option<String>>(1).as_deref(),
        Some("Order Completed")
    );
    assert_eq!(rows[1].get::<_, Value>(7)["revenue"], 42.5);
    assert_eq!(rows[2].get::<_, Option<String>>(2).as_deref(), Some("Home"));
    assert_eq!(rows[2].get::<_, Option<String>>(4).as_deref(), Some("a1"));
    assert_eq!(rows[4].get::<_, Option<String>>(5).as_deref(), Some("acme"));
    assert_eq!(rows[5].get::<_, Option<String>>(6).as_deref(), Some("a1"));
}

#[tokio::test]
async fn a_batch_is_accepted_on_batch_import_and_b() {
    let app = spawn_app().await;
    let (source_id, key) = app.create_source("Server", "server").await;
    for path in ["/v1/batch", "/v1/import", "/v1/b"] {
        let body = json!({"batch": [
            {"type": "track", "userId": "u1", "event": "Signed Up"},
            {"type": "identify", "anonymousId": "a1", "traits": {"plan": "free"}},
        ]});
        assert_eq!(
            app.post_tracking(path, &key, &body).await.status(),
            200,
            "{path}"
        );
    }
    let rows = stored(&app, "SELECT source_id::text FROM events").await;
    assert_eq!(rows.len(), 6);
    assert!(rows.iter().all(|r| r.get::<_, String>(0) == source_id));
}

#[tokio::test]
async fn the_write_key_may_come_in_the_body() {
    let app = spawn_app().await;
    let (_, key) = app.create_source("Node", "server").await;
    let body = json!({"writeKey": key, "batch": [{"type": "track", "userId": "u", "event": "E"}]});
    let response = app
        .client
        .post(app.url("/v1/batch"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let single = json!({"writeKey": key, "userId": "u", "event": "E2"});
    assert_eq!(
        app.client
            .post(app.url("/v1/track"))
            .json(&single)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    // The key is a credential: it is never stored with the message.
    let rows = stored(&app, "SELECT events::text FROM events").await;
    assert!(rows.iter().all(|r| !r.get::<_, String>(0).contains(&key)));
}

#[tokio::test]
async fn requests_without_a_valid_key_are_unauthorized() {
    let app = spawn_app().await;
    app.create_source("Web", "web").await;
    let body = json!({"batch": [{"type": "track", "userId": "u", "event": "E"}]});
    let none = app
        .client
        .post(app.url("/v1/batch"))
        .json(&body)
        .send()
        .await
        .unwrap();
    problem(none, 401).await;
    problem(
        app.post_tracking("/v1/batch", "wk_unknown", &body).await,
        401,
    )
    .await;
    let garbage = app
        .client
        .post(app.url("/v1/batch"))
        .header("authorization", "Basic %%%")
        .json(&body)
        .send()
        .await
        .unwrap();
    problem(garbage, 401).await;
    assert_eq!(app.count_events().await, 0);
}

#[tokio::test]
async fn malformed_json_is_a_bad_request() {
    let app = spawn_app().await;
    let (_, key) = app.create_source("Web", "web").await;
    let response = app
        .client
        .post(app.url("/v1/batch"))
        .basic_auth(&key, Some(""))
        .body(r#"{"batch": [{"type": "track",}"#)
        .send()
        .await
        .unwrap();
    let body = problem(response, 400).await;
    assert!(body["detail"]
        .as_str()
        .unwrap()
        .contains("not a JSON object"));
    problem(
        app.post_tracking("/v1/batch", &key, &json!({"batch": "x"}))
            .await,
        400,
    )
    .await;
    problem(
        app.post_tracking("/v1/batch", &key, &json!({"messages": []}))
            .await,
        400,
    )
    .await;
    problem(
        app.post_tracking("/v1/batch", &key, &json!({"batch": [42]}))
            .await,
        400,
    )
    .await;
}

/// Each invalid message, the detail it must produce.
#[tokio::test]
async fn invalid_messages_are_refused_with_their_index_and_field() {
    let app = spawn_app().await;
    let (_, key) = app.create_source("Web", "web").await;
    let ok = json!({"type": "track", "userId": "u", "event": "E"});
    let cases = [
        (
            json!({"type": "shout", "userId": "u"}),
            "message 1: unknown `type`",
        ),
        (
            json!({"userId": "u", "event": "E"}),
            "message 1: `type` is missing",
        ),
        (
            json!({"type": "track", "event": "E"}),
            "message 1: `userId` or `anonymousId` is required",
        ),
        (
            json!({"type": "track", "userId": "", "anonymousId": null, "event": "E"}),
            "message 1: `userId` or `anonymousId`",
        ),
        (
            json!({"type": "alias", "userId": "u"}),
            "message 1: an alias needs both `previousId` and `userId`",
        ),
        (
            json!({"type": "track", "userId": "u"}),
            "message 1: a track needs a non-empty `event`",
        ),
        (
            json!({"type": "group", "userId": "u"}),
            "message 1: a group needs a `groupId`",
        ),
        (
            json!({"type": "track", "userId": "u", "event": "E", "timestamp": "22/11/2026"}),
            "message 1: `timestamp` is not an RFC 3339",
        ),
        (
            json!({"type": "track", "userId": "u", "event": "E", "originalTimestamp": "2026-11-22"}),
            "message 1: `originalTimestamp`",
        ),
        (
            json!({"type": "track", "userId": "u", "event": "E", "properties": [1, 2]}),
            "message 1: `properties` must be an object",
        ),
        (
            json!({"type": "track", "userId": ["u"], "event": "E"}),
            "message 1: `userId` must be a string",
        ),
        (
            json!({"type": "track", "userId": "u", "event": "E", "messageId": "m".repeat(101)}),
            "message 1: `messageId` is 101 characters; the limit is 100",
        ),
        (
            json!({"type": "track", "userId": "u", "event": "E", "properties": {"note": "a\u{0}b"}}),
            "message 1: `properties` contains a NUL",
        ),
    ];
    for (bad, expected) in cases {
        let body = json!({"batch": [ok.clone(), bad]});
        let problem = problem(app.post_tracking("/v1/batch", &key, &body).await, 400).await;
        let detail = problem["detail"].as_str().unwrap();
        assert!(
            detail.starts_with(expected),
            "expected {expected:?}, got {detail:?}"
        );
    }
    // All-or-nothing: the good first message of each batch was not stored either.
    assert_eq!(app.count_events().await, 0);
}

#[tokio::test]
async fn a_message_over_32_kib_is_too_large() {
    let app = spawn_app().await;
    let (_, key) = app.create_source("Web", "web").await;
    let big = json!({"type": "track", "userId": "u", "event": "E", "properties": {"blob": "x".repeat(33 * 1024)}});
    let body = problem(
        app.post_tracking("/v1/batch", &key, &json!({"batch": [big.clone()]}))
            .await,
        413,
    )
    .await;
    assert!(
        body["detail"].as_str().unwrap().starts_with("message 0 is"),
        "{body}"
    );
    problem(app.post_tracking("/v1/track", &key, &big).await, 413).await;
    assert_eq!(app.count_events().await, 0);
}

#[tokio::test]
async fn a_request_over_500_kib_is_too_large_even_when_gzipped() {
    let app = spawn_app().await;
    let (_, key) = app.create_source("Web", "web").await;
    let message = json!({"type": "track", "userId": "u", "event": "E", "properties": {"blob": "x".repeat(20 * 1024)}});
    let body = json!({"batch": vec![message; 30]});
    let body = problem(app.post_tracking("/v1/batch", &key, &body).await, 413).await;
    assert!(body["detail"].as_str().unwrap().contains("500 KiB"));

    // 600 KiB of JSON that gzips to a few KiB: the limit applies to the decompressed body.
    let message = json!({"type": "track", "userId": "u", "event": "E", "properties": {"blob": " ".repeat(20 * 1024)}});
    let raw = serde_json::to_vec(&json!({"batch": vec![message; 30]})).unwrap();
    let response = app
        .client
        .post(app.url("/v1/batch"))
        .basic_auth(&key, Some(""))
        .header("content-encoding", "gzip")
        .body(gzip(&raw))
        .send()
        .await
        .unwrap();
    problem(response, 413).await;
    assert_eq!(app.count_events().await, 0);
}

#[tokio::test]
async fn more_than_2500_messages_is_a_bad_request() {
    let app = spawn_app().await;
    let (_, key) = app.create_source("Web", "web").await;
    let body = json!({"batch": vec![json!({"type": "page", "anonymousId": "a"}); 2501]});
    let body = problem(app.post_tracking("/v1/batch", &key, &body).await, 400).await;
    assert!(body["detail"]
        .as_str()
        .unwrap()
        .contains("2501 messages; the limit is 2500"));
}

#[tokio::test]
async fn a_retried_batch_is_acknowledged_and_stored_once() {
    let app = spawn_app().await;
    let (_, key) = app.create_source("Web", "web").await;
    let body = json!({"batch": [
        {"type": "track", "userId": "u", "event": "A", "messageId": "node-next-1700000000000-1"},
        {"type": "track", "userId": "u", "event": "B", "messageId": "m-2"},
    ]});
    for _ in 0..3 {
        assert_eq!(
            app.post_tracking("/v1/batch", &key, &body).await.status(),
            200
        );
    }
    assert_eq!(app.count_events().await, 2);
    assert_eq!(app.metric("kizuna_events_deduplicated_total").await, 4.0);

    // The same messageId from another source is another message.
    let (_, other) = app.create_source("App", "mobile").await;
    assert_eq!(
        app.post_tracking("/v1/batch", &other, &body).await.status(),
        200
    );
    assert_eq!(app.count_events().await, 4);
}

#[tokio::test]
async fn messages_without_a_message_id_get_one() {
    let app = spawn_app().await;
    let (_, key) = app.create_source("Web", "web").await;
    let body = json!({"batch": [{"type": "page", "anonymousId": "a"}, {"type": "page", "anonymousId": "a"}]});
    assert_eq!(
        app.post_tracking("/v1/batch", &key, &body).await.status(),
        200
    );
    let rows = stored(&app, "SELECT message_id FROM events").await;
    assert_eq!(rows.len(), 2);
    assert_ne!(rows[0].get::<_, String>(0), rows[1].get::<_, String>(0));
}

#[tokio::test]
async fn event_time_follows_timestamp_then_skew_corrected_original_timestamp() {
    let app = spawn_app().await;
    let (_, key) = app.create_source("App", "mobile").await;
    // The phone's clock is one hour ahead: it sent "at 13:00" what happened "at 12:30".
    let sent_at = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let original = (chrono::Utc::now() + chrono::Duration::minutes(30)).to_rfc3339();
    let body = json!({"sentAt": sent_at, "batch": [
        {"type": "track", "userId": "u", "event": "Skewed", "originalTimestamp": original},
        {"type": "track", "userId": "u", "event": "Stamped", "timestamp": "2024-03-01T10:00:00+01:00", "originalTimestamp": original},
        {"type": "track", "userId": "u", "event": "Now"},
    ]});
    assert_eq!(
        app.post_tracking("/v1/batch", &key, &body).await.status(),
        200
    );
    let rows = stored(&app, "SELECT event, extract(epoch from received_at - ts)::float8, ts = '2024-03-01T09:00:00Z'::timestamptz FROM events ORDER BY seq").await;
    let skew: f64 = rows[0].get(1);
    assert!(
        (skew - 1800.0).abs() < 5.0,
        "skew-corrected event is ~30 min before receipt, got {skew}"
    );
    assert!(rows[1].get::<_, bool>(2), "timestamp wins");
    assert!(
        rows[2].get::<_, f64>(1).abs() < 0.001,
        "received_at is the fallback"
    );
}

#[tokio::test]
async fn batch_context_and_integrations_are_merged_into_each_message() {
    let app = spawn_app().await;
    let (_, key) = app.create_source("Server", "server").await;
    let body = json!({
        "context": {"library": {"name": "analytics-python"}, "ip": "10.0.0.1"},
        "integrations": {"All": false},
        "batch": [
            {"type": "track", "userId": "u", "event": "A", "context": {"ip": "192.0.2.1"}, "channel": "server", "_metadata": {"v": 1}},
            {"type": "identify", "userId": "u", "traits": {"plan": "pro"}},
        ]
    });
    assert_eq!(
        app.post_tracking("/v1/batch", &key, &body).await.status(),
        200
    );
    let rows = stored(
        &app,
        "SELECT context, integrations, extra FROM events ORDER BY seq",
    )
    .await;
    let first: Value = rows[0].get(0);
    assert_eq!(first["ip"], "192.0.2.1", "the message's own context wins");
    assert_eq!(first["library"]["name"], "analytics-python");
    assert_eq!(rows[1].get::<_, Value>(0)["ip"], "10.0.0.1");
    assert_eq!(rows[1].get::<_, Value>(1)["All"], false);
    let extra: Value = rows[0].get(2);
    assert_eq!(extra["channel"], "server");
    assert_eq!(extra["_metadata"]["v"], 1);
}

#[tokio::test]
async fn gzip_bodies_are_accepted_whatever_the_content_type() {
    let app = spawn_app().await;
    let (_, key) = app.create_source("Node", "server").await;
    let raw = serde_json::to_vec(
        &json!({"batch": [{"type": "track", "userId": "u", "event": "Zipped"}]}),
    )
    .unwrap();
    for content_type in [
        "application/json",
        "application/x-www-form-urlencoded",
        "text/plain",
    ] {
        let response = app
            .client
            .post(app.url("/v1/batch"))
            .basic_auth(&key, Some(""))
            .header("content-type", content_type)
            .header("content-encoding", "gzip")
            .body(gzip(&raw))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{content_type}");
    }
    // RudderStack's node SDK: form content type, plain JSON body.
    let response = app
        .client
        .post(app.url("/v1/batch"))
        .basic_auth(&key, Some(""))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(raw.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(app.count_events().await, 4);

    let broken = app
        .client
        .post(app.url("/v1/batch"))
        .basic_auth(&key, Some(""))
        .header("content-encoding", "gzip")
        .body(raw)
        .send()
        .await
        .unwrap();
    problem(broken, 400).await;
}

#[tokio::test]
async fn concurrent_batches_from_several_sources_are_all_stored() {
    let app = std::sync::Arc::new(spawn_app().await);
    let mut keys = Vec::new();
    for (name, kind) in [
        ("Web", "web"),
        ("App", "mobile"),
        ("Desk", "support"),
        ("Till", "pos"),
    ] {
        keys.push(app.create_source(name, kind).await.1);
    }
    let mut tasks = Vec::new();
    for (s, key) in keys.into_iter().enumerate() {
        for b in 0..10 {
            let app = app.clone();
            let key = key.clone();
            tasks.push(tokio::spawn(async move {
                let batch: Vec<Value> = (0..50)
                    .map(|i| json!({"type": "track", "userId": format!("u{i}"), "event": "E", "messageId": format!("s{s}-b{b}-m{i}")}))
                    .collect();
                app.post_tracking("/v1/batch", &key, &json!({"batch": batch})).await.status()
            }));
        }
    }
    for task in tasks {
        assert_eq!(task.await.unwrap(), 200);
    }
    assert_eq!(app.count_events().await, 4 * 10 * 50);
    let per_source = stored(&app, "SELECT count(*) FROM events GROUP BY source_id").await;
    assert!(per_source.iter().all(|r| r.get::<_, i64>(0) == 500));
}

#[tokio::test]
async fn unsupported_content_encodings_are_refused() {
    let app = spawn_app().await;
    let (_, key) = app.create_source("Web", "web").await;
    let response = app
        .client
        .post(app.url("/v1/batch"))
        .basic_auth(&key, Some(""))
        .header("content-encoding", "br")
        .body("x")
        .send()
        .await
        .unwrap();
    problem(response, 415).await;
}
