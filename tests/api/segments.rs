//! Segments: each condition kind against hand-built data, with the expected members spelled out.

use chrono::{Duration, Utc};
use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::{problem, spawn_app, TestApp};

fn ago(days: i64) -> String {
    (Utc::now() - Duration::days(days)).to_rfc3339()
}

/// ada: pro, 36, VIP, email; three EUR orders (10, 20, 30) in the last 10 days.
/// bob: free, 20, email; one USD order of 100 five days ago; a ticket two days ago.
/// cy: pro, no email, nothing else.
async fn shop() -> (TestApp, String) {
    let app = spawn_app().await;
    let (_, key) = app.create_source("Shop", "web").await;
    let mut batch = vec![
        json!({"type": "identify", "userId": "ada", "traits": {"plan": "pro", "age": 36, "vip": true, "email": "ada@example.com", "address": {"city": "London"}}, "timestamp": ago(40)}),
        json!({"type": "identify", "userId": "bob", "traits": {"plan": "free", "age": 20, "email": "bob@example.com"}, "timestamp": ago(40)}),
        json!({"type": "identify", "userId": "cy", "traits": {"plan": "pro"}, "timestamp": ago(40)}),
        json!({"type": "track", "userId": "bob", "event": "Order Completed", "properties": {"currency": "USD", "revenue": 100}, "timestamp": ago(5)}),
        json!({"type": "track", "userId": "bob", "event": "Ticket Created", "timestamp": ago(2)}),
    ];
    for (i, revenue) in [10, 20, 30].iter().enumerate() {
        batch.push(json!({"type": "track", "userId": "ada", "event": "Order Completed", "properties": {"currency": "EUR", "revenue": revenue}, "timestamp": ago(3 + i as i64 * 3)}));
    }
    assert_eq!(
        app.post_tracking("/v1/batch", &key, &json!({"batch": batch}))
            .await
            .status(),
        200
    );
    app.settle().await;
    (app, key)
}

/// The user ids of the profiles a definition selects (via preview).
async fn who(app: &TestApp, definition: Value) -> Vec<String> {
    let response = app
        .admin(Method::POST, "/v1/segments/preview")
        .json(&json!({"definition": definition}))
        .send()
        .await
        .unwrap();
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert_eq!(status, 200, "{definition}: {body}");
    let mut users: Vec<String> = body["sample"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            p["identities"]
                .as_array()
                .unwrap()
                .iter()
                .find(|i| i["kind"] == "user_id")
                .unwrap()["value"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    users.sort();
    assert_eq!(body["count"], users.len());
    users
}

async fn create(app: &TestApp, name: &str, definition: Value) -> String {
    let response = app
        .admin(Method::POST, "/v1/segments")
        .json(&json!({"name": name, "definition": definition}))
        .send()
        .await
        .unwrap();
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert_eq!(status, 201, "{body}");
    body["id"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn each_condition_kind_selects_exactly_the_expected_profiles() {
    let (app, _) = shop().await;
    let cases = [
        (
            json!({"trait": "plan", "op": "eq", "value": "pro"}),
            vec!["ada", "cy"],
        ),
        (
            json!({"trait": "age", "op": "gt", "value": 30}),
            vec!["ada"],
        ),
        (
            json!({"trait": "age", "op": "between", "value": [18, 25]}),
            vec!["bob"],
        ),
        (
            json!({"trait": "plan", "op": "in", "value": ["free", "plus"]}),
            vec!["bob"],
        ),
        (
            json!({"trait": "vip", "op": "eq", "value": true}),
            vec!["ada"],
        ),
        (
            json!({"trait": "address.city", "op": "starts_with", "value": "Lon"}),
            vec!["ada"],
        ),
        (
            json!({"trait": "email", "op": "contains", "value": "bob"}),
            vec!["bob"],
        ),
        (json!({"trait": "age", "op": "not_exists"}), vec!["cy"]),
        (
            json!({"identity": "email", "op": "exists"}),
            vec!["ada", "bob"],
        ),
        (json!({"identity": "email", "op": "not_exists"}), vec!["cy"]),
        (
            json!({"identity": "email", "op": "eq", "value": "bob@example.com"}),
            vec!["bob"],
        ),
        (
            json!({"event": "Order Completed", "within": "30d", "count": {"op": "gte", "value": 3}}),
            vec!["ada"],
        ),
        (
            json!({"event": "Order Completed", "count": {"op": "lt", "value": 2}}),
            vec!["bob", "cy"],
        ),
        (
            json!({"event": "Order Completed", "where": {"property": "currency", "op": "eq", "value": "EUR"}}),
            vec!["ada"],
        ),
        (
            json!({"event": "Order Completed", "where": {"not": {"property": "currency", "op": "eq", "value": "EUR"}}}),
            vec!["bob"],
        ),
        (
            json!({"event": "Order Completed", "sum": {"property": "revenue", "op": "gte", "value": 80}}),
            vec!["bob"],
        ),
        (
            json!({"event": "Order Completed", "avg": {"property": "revenue", "op": "between", "value": [15, 25]}}),
            vec!["ada"],
        ),
        (
            json!({"event": "Order Completed", "min": {"property": "revenue", "op": "lt", "value": 15}}),
            vec!["ada"],
        ),
        (
            json!({"event": "Order Completed", "max": {"property": "revenue", "op": "gte", "value": 100}}),
            vec!["bob"],
        ),
        (
            json!({"not": {"event": "Ticket Created"}}),
            vec!["ada", "cy"],
        ),
        (
            json!({"any": [{"trait": "plan", "op": "eq", "value": "free"}, {"identity": "email", "op": "not_exists"}]}),
            vec!["bob", "cy"],
        ),
        (
            json!({"all": [{"trait": "plan", "op": "eq", "value": "pro"}, {"not": {"event": "Order Completed", "within": "7d"}}]}),
            vec!["cy"],
        ),
        (
            json!({"sql": "traits.plan = 'pro' AND event_count > 1"}),
            vec!["ada"],
        ),
    ];
    for (definition, expected) in cases {
        assert_eq!(
            who(&app, definition.clone()).await,
            expected,
            "{definition}"
        );
    }
}

#[tokio::test]
async fn windows_include_their_start_and_exclude_what_lies_before() {
    let app = spawn_app().await;
    let (_, key) = app.create_source("Shop", "web").await;
    let now = Utc::now();
    let batch = json!({"batch": [
        {"type": "track", "userId": "inside", "event": "Visit", "timestamp": (now - Duration::days(30) + Duration::minutes(5)).to_rfc3339()},
        {"type": "track", "userId": "outside", "event": "Visit", "timestamp": (now - Duration::days(30) - Duration::minutes(5)).to_rfc3339()},
        {"type": "track", "userId": "jan", "event": "Visit", "timestamp": "2024-01-01T00:00:00Z"},
        {"type": "track", "userId": "feb", "event": "Visit", "timestamp": "2024-02-01T00:00:00Z"},
    ]});
    assert_eq!(
        app.post_tracking("/v1/batch", &key, &batch).await.status(),
        200
    );
    app.settle().await;
    assert_eq!(
        who(&app, json!({"event": "Visit", "within": "30d"})).await,
        vec!["inside"]
    );
    assert_eq!(
        who(&app, json!({"event": "Visit", "within": "720h"})).await,
        vec!["inside"]
    );
    // {from, to} is half-open: from included, to excluded.
    let january = json!({"event": "Visit", "within": {"from": "2024-01-01T00:00:00Z", "to": "2024-02-01T00:00:00Z"}});
    assert_eq!(who(&app, january).await, vec!["jan"]);
}

#[tokio::test]
async fn segments_of_segments_follow_their_references() {
    let (app, _) = shop().await;
    let pro = create(
        &app,
        "Pro plan",
        json!({"trait": "plan", "op": "eq", "value": "pro"}),
    )
    .await;
    let buyers = json!({"all": [{"segment": pro}, {"event": "Order Completed"}]});
    assert_eq!(who(&app, buyers).await, vec!["ada"]);
    assert_eq!(
        who(&app, json!({"not": {"segment": pro}})).await,
        vec!["bob"]
    );
}

#[tokio::test]
async fn every_definition_mistake_is_a_400_that_names_it() {
    let (app, _) = shop().await;
    let a = create(
        &app,
        "A",
        json!({"trait": "plan", "op": "eq", "value": "pro"}),
    )
    .await;
    let b = create(&app, "B", json!({"segment": a})).await;
    let cases = [
        (
            json!({"trait": "plan", "op": "like", "value": "p%"}),
            "unknown op \"like\"",
        ),
        (json!({"audience": "x"}), "unknown condition"),
        (
            json!({"trait": "plan", "op": "gt", "value": 3}),
            "trait `plan` holds text, but `gt` compares it with numbers",
        ),
        (
            json!({"trait": "age", "op": "eq", "value": "36"}),
            "trait `age` holds numbers",
        ),
        (
            json!({"event": "Order Completed", "within": "ninety days"}),
            "within",
        ),
        (
            json!({"sql": "traits.plan = = 'pro'"}),
            "SQL condition cannot be planned",
        ),
        (
            json!({"sql": "id IN (SELECT usename FROM pg_catalog.pg_user)"}),
            "SQL condition cannot be planned",
        ),
        (
            json!({"sql": "no_such_column > 1"}),
            "SQL condition cannot be planned",
        ),
        (
            json!({"segment": uuid::Uuid::new_v4().to_string()}),
            "does not exist",
        ),
        (
            json!({"computed": "lifetime_spend", "op": "gte", "value": 1}),
            "unknown computed trait",
        ),
    ];
    for (definition, expected) in cases {
        let response = app
            .admin(Method::POST, "/v1/segments")
            .json(&json!({"name": "bad", "definition": definition}))
            .send()
            .await
            .unwrap();
        let body = problem(response, 400).await;
        assert!(
            body["detail"].as_str().unwrap().contains(expected),
            "{definition}: {body}"
        );
    }
    // A cycle: A → B → A.
    let response = app
        .admin(Method::PUT, &format!("/v1/segments/{a}"))
        .json(&json!({"name": "A", "definition": {"segment": b}}))
        .send()
        .await
        .unwrap();
    let body = problem(response, 400).await;
    assert!(body["detail"].as_str().unwrap().contains("cycle"), "{body}");
    // A referenced segment cannot be deleted from under its user.
    problem(
        app.admin(Method::DELETE, &format!("/v1/segments/{a}"))
            .send()
            .await
            .unwrap(),
        409,
    )
    .await;
}

#[tokio::test]
async fn evaluation_writes_entered_and_exited_diffs_and_history() {
    let (app, key) = shop().await;
    let definition = json!({"event": "Order Completed", "within": "30d"});
    let id = create(&app, "Recent buyers", definition.clone()).await;
    let preview_count = app
        .admin(Method::POST, "/v1/segments/preview")
        .json(&json!({"definition": definition}))
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap()["count"]
        .clone();

    let first: Value = app
        .admin(Method::POST, &format!("/v1/segments/{id}/evaluate"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(first["count"], 2);
    assert_eq!(first["count"], preview_count, "preview equals evaluation");
    assert_eq!(
        (first["entered"].clone(), first["exited"].clone()),
        (json!(2), json!(0))
    );

    // cy buys; bob's only order is re-dated out of the window by... nothing: bob stays, cy enters.
    let batch = json!({"batch": [{"type": "track", "userId": "cy", "event": "Order Completed", "timestamp": ago(1)}]});
    assert_eq!(
        app.post_tracking("/v1/batch", &key, &batch).await.status(),
        200
    );
    app.settle().await;
    let redefined = json!({"all": [{"event": "Order Completed", "within": "30d"}, {"trait": "plan", "op": "eq", "value": "pro"}]});
    let put = app
        .admin(Method::PUT, &format!("/v1/segments/{id}"))
        .json(&json!({"name": "Recent pro buyers", "definition": redefined}))
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 200);
    let second: Value = app
        .admin(Method::POST, &format!("/v1/segments/{id}/evaluate"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (
            second["count"].clone(),
            second["entered"].clone(),
            second["exited"].clone()
        ),
        (json!(2), json!(1), json!(1))
    );

    let history = app.get_json(&format!("/v1/segments/{id}/history")).await;
    let runs = history["items"].as_array().unwrap();
    assert_eq!(runs.len(), 2);
    assert_eq!(runs[1]["entered"], 1);
    let members = app
        .get_json(&format!("/v1/segments/{id}/members?limit=1"))
        .await;
    assert_eq!(members["items"].as_array().unwrap().len(), 1);
    assert!(members["next_cursor"].is_string());

    let ada = app.lookup("user_id", "ada").await;
    assert_eq!(ada["segments"][0]["name"], "Recent pro buyers");
    let time = |v: &Value| chrono::DateTime::parse_from_rfc3339(v.as_str().unwrap()).unwrap();
    assert_eq!(
        time(&ada["segments"][0]["entered_at"]),
        time(&first["evaluated_at"]),
        "ada entered at the first evaluation"
    );
    let bob = app.lookup("user_id", "bob").await;
    assert_eq!(bob["segments"], json!([]));
}

#[tokio::test]
async fn membership_survives_a_merge() {
    let (app, key) = shop().await;
    let id = create(
        &app,
        "Free plan",
        json!({"trait": "plan", "op": "eq", "value": "free"}),
    )
    .await;
    app.admin(Method::POST, &format!("/v1/segments/{id}/evaluate"))
        .send()
        .await
        .unwrap();
    // An older anonymous profile turns out to be bob: bob's profile merges into it.
    let early =
        json!({"batch": [{"type": "page", "anonymousId": "bob-laptop", "timestamp": ago(400)}]});
    assert_eq!(
        app.post_tracking("/v1/batch", &key, &early).await.status(),
        200
    );
    app.settle().await;
    let link =
        json!({"batch": [{"type": "identify", "anonymousId": "bob-laptop", "userId": "bob"}]});
    assert_eq!(
        app.post_tracking("/v1/batch", &key, &link).await.status(),
        200
    );
    app.settle().await;
    let bob = app.lookup("user_id", "bob").await;
    assert_eq!(
        bob["merged_from"].as_array().unwrap().len(),
        1,
        "bob's profile merged into the older one"
    );
    assert_eq!(bob["segments"][0]["id"], id);
    let members = app.get_json(&format!("/v1/segments/{id}/members")).await;
    assert_eq!(members["items"][0]["profile_id"], bob["id"]);
    let again: Value = app
        .admin(Method::POST, &format!("/v1/segments/{id}/evaluate"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (again["entered"].clone(), again["exited"].clone()),
        (json!(0), json!(0)),
        "{again}"
    );
}

#[tokio::test]
async fn computed_traits_of_each_kind_show_on_profiles_and_work_in_segments() {
    let (app, _) = shop().await;
    let definitions = [
        json!({"name": "order_count", "kind": "count", "event": "Order Completed"}),
        json!({"name": "orders_4d", "kind": "count", "event": "Order Completed", "within": "4d"}),
        json!({"name": "spend", "kind": "sum", "event": "Order Completed", "property": "revenue"}),
        json!({"name": "aov", "kind": "avg", "event": "Order Completed", "property": "revenue"}),
        json!({"name": "smallest", "kind": "min", "event": "Order Completed", "property": "revenue"}),
        json!({"name": "largest", "kind": "max", "event": "Order Completed", "property": "revenue"}),
        json!({"name": "first_revenue", "kind": "first", "event": "Order Completed", "property": "revenue"}),
        json!({"name": "last_revenue", "kind": "last", "event": "Order Completed", "property": "revenue"}),
        json!({"name": "usual_currency", "kind": "most_frequent", "event": "Order Completed", "property": "currency"}),
        json!({"name": "currencies", "kind": "unique_list", "event": "Order Completed", "property": "currency"}),
        json!({"name": "eur_orders", "kind": "count", "event": "Order Completed", "where": {"property": "currency", "op": "eq", "value": "EUR"}}),
    ];
    for definition in &definitions {
        let response = app
            .admin(Method::POST, "/v1/computed-traits")
            .json(definition)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201, "{definition}");
    }
    let bad = app
        .admin(Method::POST, "/v1/computed-traits")
        .json(&json!({"name": "x", "kind": "median", "property": "p"}))
        .send()
        .await
        .unwrap();
    problem(bad, 400).await;
    let refreshed: Value = app
        .admin(Method::POST, "/v1/computed-traits/refresh")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    // Every profile has built-ins (days since last seen at least).
    assert_eq!(refreshed["profiles"], 3);
    // The declared traits among a profile's computed values (the rest are built-ins).
    let declared = |profile: &Value| -> Value {
        let names: Vec<&str> = definitions
            .iter()
            .map(|d| d["name"].as_str().unwrap())
            .collect();
        let mut values = profile["computed"].as_object().unwrap().clone();
        values.retain(|name, _| names.contains(&name.as_str()));
        Value::Object(values)
    };

    let ada = app.lookup("user_id", "ada").await;
    assert_eq!(
        declared(&ada),
        json!({"order_count": 3.0, "orders_4d": 1.0, "spend": 60.0, "aov": 20.0, "smallest": 10.0, "largest": 30.0,
               "first_revenue": "30", "last_revenue": "10", "usual_currency": "EUR", "currencies": ["EUR"], "eur_orders": 3.0})
    );
    let cy = app.lookup("user_id", "cy").await;
    assert_eq!(declared(&cy), json!({}));

    assert_eq!(
        who(&app, json!({"computed": "spend", "op": "gte", "value": 80})).await,
        vec!["bob"]
    );
    assert_eq!(
        who(
            &app,
            json!({"computed": "currencies", "op": "contains", "value": "EUR"})
        )
        .await,
        vec!["ada"]
    );
    assert_eq!(
        who(&app, json!({"computed": "order_count", "op": "not_exists"})).await,
        vec!["cy"]
    );
    assert_eq!(
        who(
            &app,
            json!({"sql": "computed.spend > 50 AND traits.age < 30"})
        )
        .await,
        vec!["bob"]
    );
    let mismatch = app
        .admin(Method::POST, "/v1/segments/preview")
        .json(&json!({"definition": {"computed": "usual_currency", "op": "gt", "value": 3}}))
        .send()
        .await
        .unwrap();
    problem(mismatch, 400).await;
    assert_eq!(
        app.admin(Method::DELETE, "/v1/computed-traits/aov")
            .send()
            .await
            .unwrap()
            .status(),
        204
    );
    problem(
        app.admin(Method::DELETE, "/v1/computed-traits/aov")
            .send()
            .await
            .unwrap(),
        404,
    )
    .await;
}

#[tokio::test]
async fn events_already_in_the_snapshot_count_for_the_survivor_after_a_merge() {
    let (app, key) = shop().await;
    let three_orders = json!({"event": "Order Completed", "count": {"op": "gte", "value": 3}});
    // Two orders on a phone nobody has linked yet, older than bob's profile.
    let phone = json!({"batch": [
        {"type": "track", "event": "Order Completed", "anonymousId": "bob-phone", "timestamp": ago(60)},
        {"type": "track", "event": "Order Completed", "anonymousId": "bob-phone", "timestamp": ago(55)}
    ]});
    assert_eq!(
        app.post_tracking("/v1/batch", &key, &phone).await.status(),
        200
    );
    app.settle().await;
    // The snapshot now holds bob's one order and the phone's two under two profiles.
    assert_eq!(who(&app, three_orders.clone()).await, vec!["ada"]);
    // bob logs in on the phone: the phone's older profile survives and bob's merges into it.
    let link =
        json!({"batch": [{"type": "identify", "anonymousId": "bob-phone", "userId": "bob"}]});
    assert_eq!(
        app.post_tracking("/v1/batch", &key, &link).await.status(),
        200
    );
    app.settle().await;
    let bob = app.lookup("user_id", "bob").await;
    assert_eq!(bob["merged_from"].as_array().unwrap().len(), 1, "{bob}");
    assert_eq!(who(&app, three_orders).await, vec!["ada", "bob"]);
}
