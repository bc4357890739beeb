//! Privacy: erasing a person leaves nothing behind, and their identifiers stay out afterwards.

use reqwest::Method;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::helpers::{problem, spawn_app, TestApp};

const EMAIL: &str = "Ada.Lovelace@Example.com";
const PHONE: &str = "+44 20 7946 0958";

async fn send(app: &TestApp, key: &str, batch: Vec<Value>) {
    let response = app
        .post_tracking("/v1/batch", key, &json!({"batch": batch}))
        .await;
    assert_eq!(response.status(), 200);
}

/// Ada browses on her phone (a profile of its own), signs up on the web with her email and
/// phone, buys, then logs in on the phone: two profiles merged into one. Bob is someone else.
/// Returns (Ada's surviving id, Ada's merged-away id, the web write key).
async fn ada_and_bob(app: &TestApp) -> (String, String, String) {
    let (_, web) = app.create_source("Web shop", "web").await;
    send(app, &web, vec![
        json!({"type": "identify", "userId": "ada-42", "anonymousId": "anon-ada-web",
               "traits": {"email": EMAIL, "phone": PHONE, "plan": "pro", "name": "Ada Lovelace"},
               "context": {"externalIds": [{"id": "zd-ada-7", "type": "zendesk_id"}]},
               "timestamp": "2024-05-01T10:00:00Z"}),
        json!({"type": "track", "userId": "ada-42", "event": "Order Completed",
               "properties": {"revenue": 120, "note": "gift for ada-42"}, "timestamp": "2024-05-01T10:05:00Z"}),
        json!({"type": "identify", "userId": "bob-7", "traits": {"email": "bob@example.com", "plan": "free"},
               "timestamp": "2024-05-01T11:00:00Z"}),
        json!({"type": "track", "userId": "bob-7", "event": "Order Completed", "properties": {"revenue": 30},
               "timestamp": "2024-05-01T11:05:00Z"}),
    ]).await;
    send(
        app,
        &web,
        vec![
            json!({"type": "screen", "anonymousId": "anon-ada-phone", "name": "Cart",
                                "timestamp": "2024-05-02T08:00:00Z"}),
        ],
    )
    .await;
    app.settle().await;
    let phone_profile = app.lookup("anonymous_id", "anon-ada-phone").await;
    send(
        app,
        &web,
        vec![
            json!({"type": "identify", "userId": "ada-42", "anonymousId": "anon-ada-phone",
                                "timestamp": "2024-05-02T08:01:00Z"}),
        ],
    )
    .await;
    app.settle().await;
    let ada = app.lookup("user_id", "ada-42").await;
    assert_eq!(ada["merged_from"], json!([phone_profile["id"]]));
    (
        ada["id"].as_str().unwrap().to_string(),
        phone_profile["id"].as_str().unwrap().to_string(),
        web,
    )
}

async fn erase(app: &TestApp, id: &str) -> reqwest::Response {
    app.admin(Method::DELETE, &format!("/v1/profiles/{id}"))
        .send()
        .await
        .unwrap()
}

/// Every table of the database whose rows, as text, contain `needle` (case-insensitively), with
/// how many rows do. Tables are read from `information_schema`, so a future table is covered.
async fn tables_naming(app: &TestApp, needle: &str) -> Vec<(String, i64)> {
    let db = app.db().await;
    let tables: Vec<String> = db
        .query(
            "SELECT table_name::text FROM information_schema.tables
             WHERE table_schema = 'public' AND table_type = 'BASE TABLE' ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(tables.len() >= 10, "found only {tables:?}");
    let mut naming = Vec::new();
    for table in tables {
        let quoted = format!("\"{}\"", table.replace('"', "\"\""));
        let n: i64 = db
            .query_one(
                &format!(
                    "SELECT count(*) FROM {quoted} t WHERE strpos(lower(t::text), lower($1)) > 0"
                ),
                &[&needle],
            )
            .await
            .unwrap()
            .get(0);
        if n > 0 {
            naming.push((table, n));
        }
    }
    naming
}

async fn status(app: &TestApp, path: &str) -> u16 {
    app.admin(Method::GET, path)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn erasing_a_profile_leaves_no_row_anywhere_naming_it_or_its_identifiers() {
    let app = spawn_app().await;
    let (ada, ada_phone, _) = ada_and_bob(&app).await;
    // Memberships, their history and computed values exist for Ada before the erasure.
    let segment: Value = app
        .admin(Method::POST, "/v1/segments")
        .json(&json!({"name": "Buyers", "definition": {"event": "Order Completed", "within": {"from": "2024-01-01T00:00:00Z", "to": "2025-01-01T00:00:00Z"}}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let segment_id = segment["id"].as_str().unwrap();
    let evaluated = app
        .admin(Method::POST, &format!("/v1/segments/{segment_id}/evaluate"))
        .send()
        .await
        .unwrap();
    assert_eq!(evaluated.status(), 200);
    assert_eq!(evaluated.json::<Value>().await.unwrap()["count"], 2);
    let declared = app
        .admin(Method::POST, "/v1/computed-traits")
        .json(&json!({"name": "order_count", "kind": "count", "event": "Order Completed"}))
        .send()
        .await
        .unwrap();
    assert_eq!(declared.status(), 201);
    let refreshed = app
        .admin(Method::POST, "/v1/computed-traits/refresh")
        .send()
        .await
        .unwrap();
    assert_eq!(refreshed.status(), 200);
    let needles = [
        ada.as_str(),
        ada_phone.as_str(),
        "ada-42",
        "anon-ada-web",
        "anon-ada-phone",
        "zd-ada-7",
        EMAIL,
        "7946 0958",
        "+442079460958",
        "Lovelace",
    ];
    let before: Vec<String> = tables_naming(&app, &ada)
        .await
        .into_iter()
        .map(|t| t.0)
        .collect();
    for table in [
        "event_profiles",
        "identities",
        "profile_computed",
        "profile_merges",
        "profiles",
        "segment_changes",
        "segment_members",
    ] {
        assert!(
            before.iter().any(|t| t == table),
            "{table} names Ada before: {before:?}"
        );
    }

    let response = erase(&app, &ada).await;
    assert_eq!(response.status(), 204);

    for needle in needles {
        assert_eq!(
            tables_naming(&app, needle).await,
            vec![],
            "rows still naming {needle:?} after the erasure"
        );
    }
    // Bob is untouched.
    let bob = app.lookup("user_id", "bob-7").await;
    assert_eq!(bob["event_count"], 2);
    assert_eq!(bob["segments"].as_array().unwrap().len(), 1);
    // The query layer forgets Ada too, and evaluation does not bring her back.
    let evaluated: Value = app
        .admin(Method::POST, &format!("/v1/segments/{segment_id}/evaluate"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(evaluated["count"], 1);
    let preview: Value = app
        .admin(Method::POST, "/v1/segments/preview")
        .json(&json!({"definition": {"identity": "email", "op": "exists"}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(preview["count"], 1, "only Bob has an email now");
    let preview: Value = app
        .admin(Method::POST, "/v1/segments/preview")
        .json(&json!({"definition": {"event": "Order Completed", "within": {"from": "2024-01-01T00:00:00Z", "to": "2025-01-01T00:00:00Z"}, "count": {"op": "gte", "value": 1}}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        preview["count"], 1,
        "Ada's events are gone from the snapshot"
    );
}

#[tokio::test]
async fn an_erased_profile_is_not_found_by_id_identifier_timeline_or_lineage() {
    let app = spawn_app().await;
    let (ada, ada_phone, _) = ada_and_bob(&app).await;
    assert_eq!(erase(&app, &ada).await.status(), 204);

    for path in [
        format!("/v1/profiles/{ada}"),
        format!("/v1/profiles/{ada_phone}"),
        format!("/v1/profiles/{ada}/events"),
        format!("/v1/profiles/{ada}/merges"),
        "/v1/profiles/lookup?user_id=ada-42".to_string(),
        format!("/v1/profiles/lookup?email={}", urlencoding::encode(EMAIL)),
        format!("/v1/profiles/lookup?phone={}", urlencoding::encode(PHONE)),
    ] {
        assert_eq!(status(&app, &path).await, 404, "GET {path}");
    }
    let again = erase(&app, &ada).await;
    let body = problem(again, 404).await;
    assert!(body["detail"].as_str().unwrap().contains(&ada));
    problem(erase(&app, "not-a-uuid").await, 400).await;
}

#[tokio::test]
async fn erasing_a_merged_away_id_erases_the_whole_person() {
    let app = spawn_app().await;
    let (ada, ada_phone, _) = ada_and_bob(&app).await;
    assert_eq!(erase(&app, &ada_phone).await.status(), 204);
    assert_eq!(status(&app, &format!("/v1/profiles/{ada}")).await, 404);
    assert_eq!(
        status(&app, "/v1/profiles/lookup?anonymous_id=anon-ada-web").await,
        404
    );
    for needle in [ada.as_str(), ada_phone.as_str(), "anon-ada-phone", "ada-42"] {
        assert_eq!(tables_naming(&app, needle).await, vec![], "{needle}");
    }
    assert_eq!(status(&app, "/v1/profiles/lookup?user_id=bob-7").await, 200);
}

fn hash(kind: &str, value: &str) -> String {
    hex::encode(Sha256::digest(format!("{kind}:{value}").as_bytes()))
}

#[tokio::test]
async fn later_messages_with_an_erased_identifier_are_dropped_and_counted_until_unsuppressed() {
    let app = spawn_app().await;
    let (ada, _, web) = ada_and_bob(&app).await;
    assert_eq!(erase(&app, &ada).await.status(), 204);
    let stored = app.count_events().await;

    // The list holds hashes of the normalized identifiers, never the values.
    let list = app.get_json("/v1/suppressions").await;
    let items = list["items"].as_array().unwrap();
    let mut kinds: Vec<&str> = items.iter().map(|s| s["kind"].as_str().unwrap()).collect();
    kinds.sort();
    assert_eq!(
        kinds,
        [
            "anonymous_id",
            "anonymous_id",
            "email",
            "phone",
            "user_id",
            "zendesk_id"
        ]
    );
    let email_hash = hash("email", "ada.lovelace@example.com");
    let email = items
        .iter()
        .find(|s| s["value_hash"] == email_hash.as_str())
        .expect("the email's hash is listed");
    assert_eq!(email["reason"], "erasure");
    // An operator finds the entry of a value without knowing its hash.
    let found = app
        .get_json(&format!(
            "/v1/suppressions?kind=email&value={}",
            urlencoding::encode(" ADA.Lovelace@example.COM")
        ))
        .await;
    assert_eq!(found["items"], json!([email]));
    let users = app.get_json("/v1/suppressions?kind=user_id").await;
    assert_eq!(
        users["items"][0]["value_hash"],
        hash("user_id", "ada-42").as_str()
    );
    assert_eq!(users["items"].as_array().unwrap().len(), 1);
    problem(
        app.admin(Method::GET, "/v1/suppressions?value=ada-42")
            .send()
            .await
            .unwrap(),
        400,
    )
    .await;
    assert!(!list.to_string().to_lowercase().contains("lovelace"));

    // An SDK sends Ada again: acknowledged as usual, but nothing of hers is stored.
    send(&app, &web, vec![
        json!({"type": "track", "userId": "ada-42", "event": "Viewed"}),
        json!({"type": "identify", "anonymousId": "new-device", "traits": {"email": " ADA.LOVELACE@example.com "}}),
        json!({"type": "track", "anonymousId": "x", "event": "Viewed", "context": {"traits": {"phone": "+44 (20) 7946-0958"}}}),
        json!({"type": "track", "userId": "carol-1", "event": "Viewed"}),
    ]).await;
    let single = app
        .post_tracking(
            "/v1/track",
            &web,
            &json!({"userId": "ada-42", "event": "Viewed"}),
        )
        .await;
    assert_eq!(single.status(), 200);
    assert_eq!(
        single.json::<Value>().await.unwrap(),
        json!({"success": true})
    );
    assert_eq!(
        app.count_events().await,
        stored + 1,
        "only Carol's message is stored"
    );
    assert_eq!(app.metric("kizuna_events_suppressed_total").await, 4.0);
    app.settle().await;
    assert_eq!(
        status(&app, "/v1/profiles/lookup?user_id=ada-42").await,
        404
    );

    // Lifting the email's suppression lets messages carrying it in again; the rest stay out.
    let id = email["id"].as_str().unwrap();
    let lifted = app
        .admin(Method::DELETE, &format!("/v1/suppressions/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(lifted.status(), 204);
    problem(
        app.admin(Method::DELETE, &format!("/v1/suppressions/{id}"))
            .send()
            .await
            .unwrap(),
        404,
    )
    .await;
    send(
        &app,
        &web,
        vec![
            json!({"type": "identify", "anonymousId": "new-device", "traits": {"email": EMAIL}}),
            json!({"type": "track", "userId": "ada-42", "event": "Viewed"}),
        ],
    )
    .await;
    assert_eq!(app.count_events().await, stored + 2);
    assert_eq!(app.metric("kizuna_events_suppressed_total").await, 5.0);
    app.settle().await;
    assert_eq!(
        app.lookup("email", EMAIL).await["identities"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
}

#[tokio::test]
async fn privacy_calls_need_the_privacy_write_scope() {
    let app = spawn_app().await;
    let (ada, _, _) = ada_and_bob(&app).await;
    let mut tokens = Vec::new();
    for scopes in [
        json!(["profiles:read", "segments:write", "exports:read"]),
        json!(["privacy:write"]),
    ] {
        let created: Value = app
            .admin(Method::POST, "/v1/api-keys")
            .json(&json!({"name": "k", "scopes": scopes}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        tokens.push(created["token"].as_str().unwrap().to_string());
    }
    let (reader, privacy) = (&tokens[0], &tokens[1]);
    let call = |method: Method, path: String, token: &str| {
        app.client
            .request(method, app.url(&path))
            .bearer_auth(token)
            .send()
    };
    let refused = call(Method::DELETE, format!("/v1/profiles/{ada}"), reader)
        .await
        .unwrap();
    let body = problem(refused, 403).await;
    assert!(body["detail"].as_str().unwrap().contains("privacy:write"));
    problem(
        call(Method::GET, "/v1/suppressions".into(), reader)
            .await
            .unwrap(),
        403,
    )
    .await;
    problem(
        call(
            Method::DELETE,
            format!("/v1/suppressions/{}", uuid::Uuid::now_v7()),
            reader,
        )
        .await
        .unwrap(),
        403,
    )
    .await;
    problem(
        app.client
            .delete(app.url(&format!("/v1/profiles/{ada}")))
            .send()
            .await
            .unwrap(),
        401,
    )
    .await;
    assert_eq!(
        status(&app, &format!("/v1/profiles/{ada}")).await,
        200,
        "still there"
    );

    let erased = call(Method::DELETE, format!("/v1/profiles/{ada}"), privacy)
        .await
        .unwrap();
    assert_eq!(erased.status(), 204);
    let listed = call(Method::GET, "/v1/suppressions".into(), privacy)
        .await
        .unwrap();
    assert_eq!(listed.status(), 200);
}

/// Resolves what is pending, as the resolver worker would (the test's app runs none).
async fn resolve_pending(app: &TestApp) {
    let settings = kizuna::config::Settings::load().unwrap();
    let url = format!(
        "postgres://postgres@{}/{}",
        crate::helpers::pg_addr(),
        app.db_name
    );
    let db = kizuna::db::Db::connect(&settings.database, &url).unwrap();
    let rules = kizuna::identity::IdentityRules::from_settings(&settings.identity);
    let client = db.conn().await.unwrap();
    kizuna::identity::resolver::resolve_batch(&client, &rules, 10_000)
        .await
        .unwrap();
}

/// A server whose resolver is off (tests resolve by hand), a web source (id, write key) and
/// ada-42 with her email, resolved.
async fn ada_resolved_by_hand() -> (TestApp, String, String, Value) {
    let app = crate::helpers::spawn_app_with(crate::helpers::Options { via_proxy: false }, |s| {
        s.identity.enabled = false;
    })
    .await;
    let (source, web) = app.create_source("Web shop", "web").await;
    send(
        &app,
        &web,
        vec![json!({"type": "identify", "userId": "ada-42", "traits": {"email": EMAIL}})],
    )
    .await;
    resolve_pending(&app).await;
    let ada = app.lookup("user_id", "ada-42").await;
    (app, source, web, ada)
}

#[tokio::test]
async fn messages_still_waiting_for_resolution_do_not_bring_an_erased_person_back() {
    let (app, _, web, ada) = ada_resolved_by_hand().await;
    // Acknowledged before the erasure, not resolved yet: a new device, known only by the email.
    send(&app, &web, vec![
        json!({"type": "track", "anonymousId": "anon-late", "event": "Viewed", "context": {"traits": {"email": EMAIL}}}),
        json!({"type": "track", "anonymousId": "someone-else", "event": "Viewed"}),
    ]).await;

    assert_eq!(erase(&app, ada["id"].as_str().unwrap()).await.status(), 204);
    resolve_pending(&app).await;

    assert_eq!(
        status(&app, "/v1/profiles/lookup?anonymous_id=anon-late").await,
        404
    );
    assert_eq!(tables_naming(&app, "anon-late").await, vec![]);
    assert_eq!(tables_naming(&app, EMAIL).await, vec![]);
    assert_eq!(
        status(&app, "/v1/profiles/lookup?anonymous_id=someone-else").await,
        200
    );
}

#[tokio::test]
async fn a_message_that_slipped_past_the_ingest_check_is_dropped_by_the_resolver() {
    let (app, source, _, ada) = ada_resolved_by_hand().await;
    assert_eq!(erase(&app, ada["id"].as_str().unwrap()).await.status(), 204);
    let before = app.count_events().await;

    // What another instance, whose list is a moment stale, would have stored.
    let source: uuid::Uuid = source.parse().unwrap();
    app.db()
        .await
        .batch_execute(&format!(
            "WITH e AS (INSERT INTO events (source_id, message_id, type, event, anonymous_id, ts, received_at, context)
                        VALUES ('{source}', 'late-1', 'track', 'Viewed', 'anon-late', now(), now(),
                                '{{\"traits\": {{\"email\": \"ada.lovelace@example.com\"}}}}')
                        RETURNING seq, ts)
             INSERT INTO event_profiles (seq, ts) SELECT seq, ts FROM e"
        ))
        .await
        .unwrap();
    assert_eq!(app.count_events().await, before + 1);
    resolve_pending(&app).await;

    assert_eq!(app.count_events().await, before, "the resolver deleted it");
    assert_eq!(
        status(&app, "/v1/profiles/lookup?anonymous_id=anon-late").await,
        404
    );
    assert_eq!(tables_naming(&app, "anon-late").await, vec![]);
}
