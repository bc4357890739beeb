use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::{problem, spawn_app};

#[tokio::test]
async fn a_new_source_shows_its_write_key_once_and_stores_only_its_hash() {
    let app = spawn_app().await;
    let response = app
        .admin(Method::POST, "/v1/sources")
        .json(&json!({"name": "Web shop", "kind": "web"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let created: Value = response.json().await.unwrap();
    let key = created["write_key"].as_str().unwrap();
    assert_eq!(created["name"], "Web shop");
    assert_eq!(created["kind"], "web");
    assert_eq!(created["enabled"], true);

    let id = created["id"].as_str().unwrap();
    let fetched: Value = app
        .admin(Method::GET, &format!("/v1/sources/{id}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(fetched["name"], "Web shop");
    assert!(
        fetched.get("write_key").is_none(),
        "the key is shown only at creation"
    );

    let row = app
        .db()
        .await
        .query_one("SELECT sources::text FROM sources", &[])
        .await
        .unwrap();
    let stored: String = row.get(0);
    assert!(
        !stored.contains(key),
        "the write key itself is never stored"
    );
}

#[tokio::test]
async fn a_source_of_an_unknown_kind_or_without_a_name_is_refused() {
    let app = spawn_app().await;
    for body in [
        json!({"name": "x", "kind": "fax"}),
        json!({"name": "  ", "kind": "web"}),
        json!({"kind": "web"}),
    ] {
        let response = app
            .admin(Method::POST, "/v1/sources")
            .json(&body)
            .send()
            .await
            .unwrap();
        problem(response, 400).await;
    }
}

#[tokio::test]
async fn sources_are_listed_in_pages() {
    let app = spawn_app().await;
    for (name, kind) in [("Web", "web"), ("App", "mobile"), ("Desk", "support")] {
        app.create_source(name, kind).await;
    }
    let first: Value = app
        .admin(Method::GET, "/v1/sources?limit=2")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(first["items"].as_array().unwrap().len(), 2);
    let cursor = first["next_cursor"].as_str().unwrap();
    let second: Value = app
        .admin(Method::GET, &format!("/v1/sources?limit=2&cursor={cursor}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(second["items"][0]["name"], "Desk");
    assert_eq!(second["next_cursor"], Value::Null);
    problem(
        app.admin(Method::GET, "/v1/sources?limit=0")
            .send()
            .await
            .unwrap(),
        400,
    )
    .await;
    problem(
        app.admin(Method::GET, "/v1/sources?cursor=nope")
            .send()
            .await
            .unwrap(),
        400,
    )
    .await;
}

#[tokio::test]
async fn a_disabled_source_is_refused_until_enabled_again() {
    let app = spawn_app().await;
    let (id, key) = app.create_source("POS", "pos").await;
    let event = json!({"userId": "u1", "event": "Order Completed"});
    assert_eq!(
        app.post_tracking("/v1/track", &key, &event).await.status(),
        200
    );

    let patched = app
        .admin(Method::PATCH, &format!("/v1/sources/{id}"))
        .json(&json!({"enabled": false}))
        .send()
        .await
        .unwrap();
    assert_eq!(patched.status(), 200);
    let body = problem(app.post_tracking("/v1/track", &key, &event).await, 401).await;
    assert!(body["detail"].as_str().unwrap().contains("disabled"));

    app.admin(Method::PATCH, &format!("/v1/sources/{id}"))
        .json(&json!({"enabled": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        app.post_tracking("/v1/track", &key, &event).await.status(),
        200
    );
    assert_eq!(app.count_events().await, 2);
}

#[tokio::test]
async fn a_deleted_source_disappears_and_its_key_stops_working() {
    let app = spawn_app().await;
    let (id, key) = app.create_source("CRM", "crm").await;
    assert_eq!(
        app.admin(Method::DELETE, &format!("/v1/sources/{id}"))
            .send()
            .await
            .unwrap()
            .status(),
        204
    );
    problem(
        app.admin(Method::GET, &format!("/v1/sources/{id}"))
            .send()
            .await
            .unwrap(),
        404,
    )
    .await;
    problem(
        app.admin(Method::DELETE, &format!("/v1/sources/{id}"))
            .send()
            .await
            .unwrap(),
        404,
    )
    .await;
    problem(
        app.post_tracking("/v1/track", &key, &json!({"userId": "u", "event": "E"}))
            .await,
        401,
    )
    .await;
}

#[tokio::test]
async fn unknown_sources_and_malformed_ids_get_problems() {
    let app = spawn_app().await;
    let missing = uuid::Uuid::new_v4();
    problem(
        app.admin(Method::GET, &format!("/v1/sources/{missing}"))
            .send()
            .await
            .unwrap(),
        404,
    )
    .await;
    problem(
        app.admin(Method::GET, "/v1/sources/not-a-uuid")
            .send()
            .await
            .unwrap(),
        400,
    )
    .await;
    problem(
        app.admin(Method::PATCH, &format!("/v1/sources/{missing}"))
            .json(&json!({"enabled": false}))
            .send()
            .await
            .unwrap(),
        404,
    )
    .await;
    let bad_json = app
        .admin(Method::POST, "/v1/sources")
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    problem(bad_json, 400).await;
}

#[tokio::test]
async fn the_admin_api_needs_a_valid_token_with_the_admin_scope() {
    let app = spawn_app().await;
    let no_token = app.client.get(app.url("/v1/sources")).send().await.unwrap();
    problem(no_token, 401).await;
    let wrong = app
        .client
        .get(app.url("/v1/sources"))
        .bearer_auth("nope")
        .send()
        .await
        .unwrap();
    problem(wrong, 401).await;

    let created: Value = app
        .admin(Method::POST, "/v1/api-keys")
        .json(&json!({"name": "dashboards", "scopes": ["profiles:read", "segments:read"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let reader = created["token"].as_str().unwrap();
    let forbidden = app
        .client
        .get(app.url("/v1/sources"))
        .bearer_auth(reader)
        .send()
        .await
        .unwrap();
    let body = problem(forbidden, 403).await;
    assert!(body["detail"].as_str().unwrap().contains("admin"));
}

#[tokio::test]
async fn api_keys_are_created_listed_without_tokens_and_revoked() {
    let app = spawn_app().await;
    let response = app
        .admin(Method::POST, "/v1/api-keys")
        .json(&json!({"name": "ops", "scopes": ["admin"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let created: Value = response.json().await.unwrap();
    let token = created["token"].as_str().unwrap().to_string();
    let id = created["id"].as_str().unwrap().to_string();
    assert_eq!(created["scopes"], json!(["admin"]));

    // The new key works like the bootstrap token.
    let with_key = app
        .client
        .post(app.url("/v1/sources"))
        .bearer_auth(&token)
        .json(&json!({"name": "Mail", "kind": "email"}))
        .send()
        .await
        .unwrap();
    assert_eq!(with_key.status(), 201);

    let listed: Value = app
        .admin(Method::GET, "/v1/api-keys")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["items"].as_array().unwrap().len(), 1);
    assert!(listed["items"][0].get("token").is_none());
    assert!(!listed.to_string().contains(&token));

    assert_eq!(
        app.admin(Method::DELETE, &format!("/v1/api-keys/{id}"))
            .send()
            .await
            .unwrap()
            .status(),
        204
    );
    let revoked = app
        .client
        .get(app.url("/v1/sources"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    problem(revoked, 401).await;
    problem(
        app.admin(Method::DELETE, &format!("/v1/api-keys/{id}"))
            .send()
            .await
            .unwrap(),
        404,
    )
    .await;
}

#[tokio::test]
async fn api_keys_need_known_scopes() {
    let app = spawn_app().await;
    for body in [
        json!({"name": "x", "scopes": ["root"]}),
        json!({"name": "x", "scopes": []}),
    ] {
        let body = problem(
            app.admin(Method::POST, "/v1/api-keys")
                .json(&body)
                .send()
                .await
                .unwrap(),
            400,
        )
        .await;
        assert!(body["detail"].as_str().unwrap().contains("scope"));
    }
}
