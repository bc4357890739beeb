//! Identity resolution scenarios, as a customer-data team would describe them.

use serde_json::{json, Value};

use crate::helpers::{identities, listed, problem, spawn_app, spawn_app_with, Options, TestApp};

fn pair(kind: &str, value: &str) -> (String, String) {
    (kind.to_string(), value.to_string())
}

/// The one number `sql` selects.
async fn count(app: &TestApp, sql: &str) -> i64 {
    app.db().await.query_one(sql, &[]).await.unwrap().get(0)
}

/// How many profiles are live (not merged away).
async fn live_profiles(app: &TestApp) -> i64 {
    count(
        app,
        "SELECT count(*) FROM profiles WHERE merged_into IS NULL",
    )
    .await
}

/// The items of a profile's merge lineage (`GET /v1/profiles/{id}/merges`).
async fn merges(app: &TestApp, profile: &Value) -> Vec<Value> {
    let path = format!("/v1/profiles/{}/merges", profile["id"].as_str().unwrap());
    app.get_json(&path).await["items"]
        .as_array()
        .unwrap()
        .clone()
}

async fn send(app: &TestApp, key: &str, batch: Vec<Value>) {
    let response = app
        .post_tracking("/v1/batch", key, &json!({"batch": batch}))
        .await;
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn anonymous_browsing_then_login_merges_the_history_and_a_second_device_joins() {
    let app = spawn_app().await;
    let (_, web) = app.create_source("Web shop", "web").await;
    let (_, mobile) = app.create_source("iOS app", "mobile").await;
    send(&app, &web, vec![
        json!({"type": "page", "anonymousId": "browser-1", "name": "Home", "timestamp": "2024-05-01T10:00:00Z"}),
        json!({"type": "page", "anonymousId": "browser-1", "name": "Linen Shirt", "timestamp": "2024-05-01T10:01:00Z"}),
    ]).await;
    send(&app, &web, vec![json!({"type": "identify", "anonymousId": "browser-1", "userId": "ada", "traits": {"email": "ada@example.com", "plan": "free"}, "timestamp": "2024-05-01T10:02:00Z"})]).await;
    app.settle().await;
    let profile = app.lookup("user_id", "ada").await;
    assert_eq!(
        profile["event_count"], 3,
        "the anonymous pages belong to Ada now"
    );
    assert_eq!(profile["traits"]["plan"], "free");
    assert_eq!(
        identities(&profile),
        vec![
            pair("anonymous_id", "browser-1"),
            pair("email", "ada@example.com"),
            pair("user_id", "ada")
        ]
    );
    assert_eq!(profile["first_seen"], "2024-05-01T10:00:00Z");
    assert_eq!(
        listed(&profile["identities"], "/kind"),
        ["anonymous_id", "email", "user_id"],
        "identities are listed oldest first, then by kind"
    );

    // The phone browses anonymously first (its own profile), then Ada logs in on it.
    send(&app, &mobile, vec![json!({"type": "screen", "anonymousId": "phone-7", "name": "Cart", "timestamp": "2024-05-02T08:00:00Z"})]).await;
    app.settle().await;
    let phone_profile = app.lookup("anonymous_id", "phone-7").await;
    assert_ne!(phone_profile["id"], profile["id"]);
    send(&app, &mobile, vec![json!({"type": "identify", "anonymousId": "phone-7", "userId": "ada", "timestamp": "2024-05-02T08:01:00Z"})]).await;
    app.settle().await;

    let joined = app.lookup("anonymous_id", "phone-7").await;
    assert_eq!(joined["id"], profile["id"], "the oldest profile survives");
    assert_eq!(joined["event_count"], 5);
    assert_eq!(joined["merged_from"], json!([phone_profile["id"]]));
    let by_old_id = app
        .get_json(&format!(
            "/v1/profiles/{}",
            phone_profile["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(
        by_old_id["id"], profile["id"],
        "a merged-away id resolves to the survivor"
    );

    let timeline = app
        .get_json(&format!(
            "/v1/profiles/{}/events",
            profile["id"].as_str().unwrap()
        ))
        .await;
    let kinds = listed(&timeline["items"], "/source/kind");
    assert_eq!(
        kinds,
        ["mobile", "mobile", "web", "web", "web"],
        "newest first, across channels"
    );
}

#[tokio::test]
async fn a_support_ticket_with_only_an_email_and_a_desk_id_joins_the_right_person() {
    let app = spawn_app().await;
    let (_, web) = app.create_source("Web", "web").await;
    let (_, desk) = app.create_source("Zendesk", "support").await;
    send(&app, &web, vec![
        json!({"type": "identify", "userId": "ada", "traits": {"email": "ada@example.com"}}),
        json!({"type": "identify", "userId": "grace", "traits": {"email": "grace@example.com"}}),
    ]).await;
    send(&app, &desk, vec![json!({
        "type": "track", "event": "Ticket Created", "anonymousId": "zd-requester-551",
        "context": {"traits": {"email": " Grace@Example.com"}, "externalIds": [{"id": "Z-42", "type": "zendesk_id", "collection": "users", "encoding": "none"}]},
    })]).await;
    app.settle().await;
    let grace = app.lookup("user_id", "grace").await;
    assert_eq!(grace["event_count"], 2);
    assert_eq!(app.lookup("zendesk_id", "Z-42").await["id"], grace["id"]);
    assert_eq!(app.lookup("user_id", "ada").await["event_count"], 1);
}

#[tokio::test]
async fn a_point_of_sale_order_with_a_formatted_phone_joins_and_email_case_does_not_matter() {
    let app = spawn_app().await;
    let (_, web) = app.create_source("Web", "web").await;
    let (_, till) = app.create_source("Store till", "pos").await;
    let (_, mail) = app.create_source("Newsletter", "email").await;
    send(&app, &web, vec![json!({"type": "identify", "userId": "ada", "traits": {"email": "ada@example.com", "phone": "+44 20 7946 0958"}})]).await;
    send(&app, &till, vec![json!({"type": "track", "event": "Order Completed", "anonymousId": "receipt-881", "properties": {"total": 42}, "context": {"traits": {"phone": "(+44) 20-7946-0958"}}})]).await;
    send(&app, &mail, vec![json!({"type": "track", "event": "Email Opened", "anonymousId": "mail-open-3", "context": {"traits": {"email": "  ADA@Example.COM "}}})]).await;
    app.settle().await;
    let ada = app.lookup("phone", "+442079460958").await;
    assert_eq!(ada["event_count"], 3);
    assert_eq!(
        app.lookup("email", "Ada@Example.com").await["id"],
        ada["id"],
        "lookups normalize like resolution"
    );
}

#[tokio::test]
async fn a_shared_family_computer_and_a_household_landline_do_not_fuse_two_people() {
    let app = spawn_app().await;
    let (_, web) = app.create_source("Web", "web").await;
    send(&app, &web, vec![
        json!({"type": "identify", "anonymousId": "family-pc", "userId": "mum", "traits": {"phone": "01632 960 001"}}),
        json!({"type": "identify", "anonymousId": "family-pc", "userId": "son", "traits": {"phone": "01632 960 001"}}),
        json!({"type": "track", "anonymousId": "family-pc", "userId": "son", "event": "Game Bought"}),
    ]).await;
    app.settle().await;
    let mum = app.lookup("user_id", "mum").await;
    let son = app.lookup("user_id", "son").await;
    assert_ne!(mum["id"], son["id"]);
    assert_eq!(son["event_count"], 2);
    assert_eq!(identities(&son), vec![pair("user_id", "son")]);
    assert_eq!(app.lookup("phone", "01632960001").await["id"], mum["id"]);
}

#[tokio::test]
async fn placeholder_ids_on_many_people_fuse_nobody() {
    let app = spawn_app().await;
    let (_, web) = app.create_source("Web", "web").await;
    let batch = ["undefined", "null", "0", "N/A", "anonymous"]
        .iter()
        .enumerate()
        .map(|(i, junk)| json!({"type": "identify", "userId": format!("user-{i}"), "anonymousId": junk, "traits": {"email": "null", "phone": "unknown"}}))
        .collect();
    send(&app, &web, batch).await;
    app.settle().await;
    assert_eq!(live_profiles(&app).await, 5);
    problem(
        app.admin(
            reqwest::Method::GET,
            "/v1/profiles/lookup?anonymous_id=undefined",
        )
        .send()
        .await
        .unwrap(),
        404,
    )
    .await;
}

#[tokio::test]
async fn an_older_identify_arriving_late_does_not_win_and_null_removes_a_trait() {
    let app = spawn_app().await;
    let (_, web) = app.create_source("Web", "web").await;
    let (_, crm) = app.create_source("CRM", "crm").await;
    send(&app, &web, vec![json!({"type": "identify", "userId": "ada", "timestamp": "2024-06-01T00:00:00Z", "traits": {"plan": "pro", "coupon": "WELCOME"}})]).await;
    send(&app, &crm, vec![
        json!({"type": "identify", "userId": "ada", "timestamp": "2024-01-01T00:00:00Z", "traits": {"plan": "free", "company": "Analytical Engines"}}),
        json!({"type": "identify", "userId": "ada", "timestamp": "2024-07-01T00:00:00Z", "traits": {"coupon": null}}),
    ]).await;
    app.settle().await;
    let ada = app.lookup("user_id", "ada").await;
    assert_eq!(
        ada["traits"],
        json!({"plan": "pro", "company": "Analytical Engines"})
    );
}

#[tokio::test]
async fn an_alias_joins_and_a_late_link_merge_explains_itself() {
    let app = spawn_app().await;
    let (_, web) = app.create_source("Web", "web").await;
    let (_, mail) = app.create_source("Email", "email").await;
    send(&app, &web, vec![
        json!({"type": "page", "anonymousId": "visitor-9", "timestamp": "2024-01-01T00:00:00Z"}),
        json!({"type": "identify", "userId": "ada", "timestamp": "2024-02-01T00:00:00Z"}),
    ]).await;
    send(&app, &mail, vec![json!({"type": "track", "event": "Email Clicked", "anonymousId": "esp-77", "context": {"traits": {"email": "ada@example.com"}}, "timestamp": "2024-03-01T00:00:00Z"})]).await;
    app.settle().await;
    let visitor = app.lookup("anonymous_id", "visitor-9").await;
    let ada = app.lookup("user_id", "ada").await;
    let by_email = app.lookup("email", "ada@example.com").await;
    assert_ne!(visitor["id"], ada["id"]);
    assert_ne!(by_email["id"], ada["id"]);

    send(&app, &web, vec![
        json!({"type": "alias", "previousId": "visitor-9", "userId": "ada", "messageId": "alias-1"}),
        json!({"type": "identify", "userId": "ada", "traits": {"email": "ada@example.com"}, "messageId": "late-link"}),
    ]).await;
    app.settle().await;
    let survivor = app.lookup("user_id", "ada").await;
    assert_eq!(survivor["id"], visitor["id"], "the oldest profile survives");
    assert_eq!(survivor["event_count"], 5);
    let items = merges(&app, &survivor).await;
    assert_eq!(items.len(), 2);
    assert_eq!(items[0]["profile_id"], ada["id"]);
    assert_eq!(
        items[0]["identifier"],
        json!({"kind": "user_id", "value": "ada"})
    );
    assert_eq!(items[0]["message_id"], "alias-1");
    assert_eq!(items[1]["profile_id"], by_email["id"]);
    assert_eq!(
        items[1]["identifier"],
        json!({"kind": "email", "value": "ada@example.com"})
    );
    assert_eq!(items[1]["message_id"], "late-link");
}

#[tokio::test]
async fn sixteen_concurrent_requests_for_one_new_person_make_one_profile() {
    let app = std::sync::Arc::new(spawn_app().await);
    let mut keys = Vec::new();
    for kind in ["web", "mobile", "support", "pos"] {
        keys.push(app.create_source(kind, kind).await.1);
    }
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let (app, key) = (app.clone(), keys[i % 4].clone());
            tokio::spawn(async move {
                let body = json!({"type": "identify", "userId": "newcomer", "anonymousId": format!("device-{i}"), "traits": {"email": "new@example.com"}});
                app.post_tracking("/v1/identify", &key, &body).await.status()
            })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap(), 200);
    }
    app.settle().await;
    let profile = app.lookup("email", "new@example.com").await;
    assert_eq!(profile["event_count"], 16);
    assert_eq!(identities(&profile).len(), 18);
    assert_eq!(live_profiles(&app).await, 1);
}

#[tokio::test]
async fn arrival_order_does_not_change_the_profile() {
    let app = spawn_app().await;
    let (_, web) = app.create_source("Web", "web").await;
    let messages = |tag: &str| {
        vec![
            json!({"type": "identify", "userId": format!("u-{tag}"), "timestamp": "2024-01-01T00:00:00Z", "traits": {"plan": "free", "city": "York"}}),
            json!({"type": "identify", "anonymousId": format!("a-{tag}"), "timestamp": "2024-03-01T00:00:00Z", "traits": {"email": format!("{tag}@example.com"), "plan": "pro"}}),
            json!({"type": "identify", "userId": format!("u-{tag}"), "anonymousId": format!("a-{tag}"), "timestamp": "2024-02-01T00:00:00Z", "traits": {"city": "Bath"}}),
        ]
    };
    let forward = messages("forward");
    let mut reverse = messages("reverse");
    reverse.reverse();
    for message in forward {
        send(&app, &web, vec![message]).await;
        app.settle().await;
    }
    for message in reverse {
        send(&app, &web, vec![message]).await;
        app.settle().await;
    }
    let a = app.lookup("user_id", "u-forward").await;
    let b = app.lookup("user_id", "u-reverse").await;
    assert_eq!(a["traits"]["plan"], "pro");
    assert_eq!(a["traits"]["city"], "Bath");
    assert_eq!(a["traits"]["plan"], b["traits"]["plan"]);
    assert_eq!(a["traits"]["city"], b["traits"]["city"]);
    assert_eq!(identities(&a).len(), 3);
    assert_eq!(identities(&b).len(), 3);
    assert_eq!(a["event_count"], b["event_count"]);
}

#[tokio::test]
async fn the_timeline_pages_and_filters_by_source_and_type() {
    let app = spawn_app().await;
    let (web_id, web) = app.create_source("Web", "web").await;
    let (_, desk) = app.create_source("Desk", "support").await;
    let batch: Vec<Value> = (0..5)
        .map(|i| json!({"type": "page", "userId": "ada", "name": format!("P{i}"), "timestamp": format!("2024-01-0{}T00:00:00Z", i + 1)}))
        .collect();
    send(&app, &web, batch).await;
    send(&app, &desk, vec![json!({"type": "track", "userId": "ada", "event": "Ticket Created", "timestamp": "2024-02-01T00:00:00Z"})]).await;
    app.settle().await;
    let id = app.lookup("user_id", "ada").await["id"]
        .as_str()
        .unwrap()
        .to_string();

    let first = app
        .get_json(&format!("/v1/profiles/{id}/events?limit=4"))
        .await;
    assert_eq!(first["items"][0]["event"], "Ticket Created");
    assert_eq!(first["items"].as_array().unwrap().len(), 4);
    let cursor = first["next_cursor"].as_str().unwrap();
    let second = app
        .get_json(&format!("/v1/profiles/{id}/events?limit=4&before={cursor}"))
        .await;
    assert_eq!(listed(&second["items"], "/name"), ["P1", "P0"]);
    assert_eq!(second["next_cursor"], Value::Null);

    let support = app
        .get_json(&format!("/v1/profiles/{id}/events?source=support"))
        .await;
    assert_eq!(support["items"].as_array().unwrap().len(), 1);
    let web_only = app
        .get_json(&format!(
            "/v1/profiles/{id}/events?source={web_id}&type=page"
        ))
        .await;
    assert_eq!(web_only["items"].as_array().unwrap().len(), 5);
    problem(
        app.admin(
            reqwest::Method::GET,
            &format!("/v1/profiles/{id}/events?type=shout"),
        )
        .send()
        .await
        .unwrap(),
        400,
    )
    .await;
    problem(
        app.admin(
            reqwest::Method::GET,
            &format!("/v1/profiles/{id}/events?before=xyz"),
        )
        .send()
        .await
        .unwrap(),
        400,
    )
    .await;
}

#[tokio::test]
async fn unknown_profiles_and_bad_lookups_get_problems() {
    let app = spawn_app().await;
    let missing = uuid::Uuid::new_v4();
    problem(
        app.admin(reqwest::Method::GET, &format!("/v1/profiles/{missing}"))
            .send()
            .await
            .unwrap(),
        404,
    )
    .await;
    problem(
        app.admin(
            reqwest::Method::GET,
            &format!("/v1/profiles/{missing}/events"),
        )
        .send()
        .await
        .unwrap(),
        404,
    )
    .await;
    problem(
        app.admin(
            reqwest::Method::GET,
            "/v1/profiles/lookup?email=nobody@example.com",
        )
        .send()
        .await
        .unwrap(),
        404,
    )
    .await;
    problem(
        app.admin(reqwest::Method::GET, "/v1/profiles/lookup")
            .send()
            .await
            .unwrap(),
        400,
    )
    .await;
    problem(
        app.admin(
            reqwest::Method::GET,
            "/v1/profiles/lookup?email=a@b.c&user_id=x",
        )
        .send()
        .await
        .unwrap(),
        400,
    )
    .await;
    let no_token = app
        .client
        .get(app.url(&format!("/v1/profiles/{missing}")))
        .send()
        .await
        .unwrap();
    problem(no_token, 401).await;
}

/// With one event a batch, the resolver decides each batch while the one before is still being
/// written (seeing that batch's outcome before it commits): a login joining the history, a
/// second device merging in, a trait and a shared computer must come out as if resolved in one go.
#[tokio::test]
async fn a_burst_resolved_one_event_a_batch_ends_as_if_resolved_at_once() {
    let app = crate::helpers::spawn_app_with(crate::helpers::Options { via_proxy: false }, |s| {
        s.identity.batch_size = 1;
    })
    .await;
    let (_, web) = app.create_source("Web", "web").await;
    send(&app, &web, vec![
        json!({"type": "page", "anonymousId": "laptop-1", "timestamp": "2024-05-01T10:00:00Z"}),
        json!({"type": "identify", "anonymousId": "laptop-1", "userId": "ada", "traits": {"email": "ada@example.com", "plan": "free"}, "timestamp": "2024-05-01T10:01:00Z"}),
        json!({"type": "screen", "anonymousId": "phone-2", "timestamp": "2024-05-01T10:02:00Z"}),
        json!({"type": "identify", "anonymousId": "phone-2", "userId": "ada", "messageId": "phone-login", "timestamp": "2024-05-01T10:03:00Z"}),
        json!({"type": "identify", "userId": "ada", "traits": {"plan": "pro"}, "timestamp": "2024-05-01T10:04:00Z"}),
        json!({"type": "identify", "anonymousId": "family-pc", "userId": "bob", "timestamp": "2024-05-01T11:00:00Z"}),
        json!({"type": "identify", "anonymousId": "family-pc", "userId": "carol", "timestamp": "2024-05-01T11:05:00Z"}),
        json!({"type": "track", "event": "Order Completed", "userId": "carol", "timestamp": "2024-05-01T11:06:00Z"}),
    ]).await;
    app.settle().await;

    let ada = app.lookup("user_id", "ada").await;
    assert_eq!(ada["event_count"], 5, "both devices' history is Ada's");
    assert_eq!(ada["traits"]["plan"], "pro");
    assert_eq!(ada["first_seen"], "2024-05-01T10:00:00Z");
    assert_eq!(
        identities(&ada),
        vec![
            pair("anonymous_id", "laptop-1"),
            pair("anonymous_id", "phone-2"),
            pair("email", "ada@example.com"),
            pair("user_id", "ada"),
        ]
    );
    let items = merges(&app, &ada).await;
    assert_eq!(items.len(), 1, "the phone's profile merged in once");
    assert_eq!(items[0]["message_id"], "phone-login");

    let bob = app.lookup("user_id", "bob").await;
    let carol = app.lookup("user_id", "carol").await;
    assert_ne!(bob["id"], carol["id"], "a shared computer fuses nobody");
    assert_eq!(carol["event_count"], 2);
    assert_eq!(live_profiles(&app).await, 3);
}

#[tokio::test]
async fn metrics_show_how_long_each_message_waited_for_its_profile() {
    let app = spawn_app().await;
    let (_, web) = app.create_source("Web shop", "web").await;
    let started = std::time::Instant::now();
    send(&app, &web, vec![
        json!({"type": "page", "anonymousId": "browser-9", "name": "Home"}),
        json!({"type": "identify", "anonymousId": "browser-9", "userId": "grace", "traits": {"plan": "pro"}}),
        // Every identifier blocked: resolved to no profile, and counted all the same.
        json!({"type": "track", "anonymousId": "undefined", "event": "Ping"}),
    ]).await;
    app.settle().await;
    // The resolver records a batch just after it commits; `settle` may see the commit first.
    let mut resolved = 0.0;
    for _ in 0..100 {
        resolved = app.metric("kizuna_identity_events_resolved_total").await;
        if resolved >= 3.0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(resolved, 3.0);
    let lag = "kizuna_identity_resolution_lag_seconds";
    assert_eq!(app.metric(&format!("{lag}_count")).await, 3.0);
    let waited = app.metric(&format!("{lag}_sum")).await;
    assert!(
        waited > 0.0 && waited <= 3.0 * started.elapsed().as_secs_f64(),
        "three messages waited {waited} s in all, within the test's {:?}",
        started.elapsed()
    );
    assert_eq!(app.lookup("user_id", "grace").await["event_count"], 2);
}

#[tokio::test]
async fn lookups_arriving_together_each_get_their_own_person() {
    let app = spawn_app().await;
    let (_, web) = app.create_source("Web", "web").await;
    let people: Vec<Value> = (0..40)
        .map(|i| json!({"type": "identify", "userId": format!("person-{i}"), "traits": {"email": format!("person{i}@example.com"), "name": format!("Person {i}")}}))
        .collect();
    send(&app, &web, people).await;
    app.settle().await;

    // Read together (the server answers lookups that arrive while others are being read in
    // one statement): each by user id and by email, plus people nobody has seen.
    let ask = |kind: &'static str, value: String| {
        let request = app.admin(
            reqwest::Method::GET,
            &format!("/v1/profiles/lookup?{kind}={}", urlencoding::encode(&value)),
        );
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.unwrap())
        }
    };
    let mut asked = Vec::new();
    for i in 0..40 {
        asked.push(ask("user_id", format!("person-{i}")));
        asked.push(ask("email", format!("Person{i}@Example.com")));
        if i % 4 == 0 {
            asked.push(ask("user_id", format!("stranger-{i}")));
        }
    }
    let answers = futures::future::join_all(asked).await;
    let mut by_user = std::collections::HashMap::new();
    let mut answers = answers.into_iter();
    for i in 0..40 {
        let (status, by_id) = answers.next().unwrap();
        assert_eq!(status, 200);
        assert_eq!(by_id["traits"]["name"], format!("Person {i}"));
        let (status, by_email) = answers.next().unwrap();
        assert_eq!(status, 200);
        assert_eq!(
            by_email["id"], by_id["id"],
            "person {i} by email and by user id"
        );
        by_user.insert(by_id["id"].to_string(), i);
        if i % 4 == 0 {
            let (status, stranger) = answers.next().unwrap();
            assert_eq!(status, 404);
            assert_eq!(
                stranger["detail"],
                format!("no profile has the user_id \"stranger-{i}\"")
            );
        }
    }
    assert_eq!(by_user.len(), 40, "forty people, forty profiles");
}

#[tokio::test]
async fn a_lookup_of_a_value_no_identifier_can_hold_is_not_found() {
    let app = spawn_app().await;
    let (_, web) = app.create_source("Web", "web").await;
    send(
        &app,
        &web,
        vec![json!({"type": "identify", "userId": "ada"})],
    )
    .await;
    app.settle().await;
    // PostgreSQL text cannot hold NUL, so no identifier has one: not found, not a failed read.
    let response = app
        .admin(reqwest::Method::GET, "/v1/profiles/lookup?user_id=ada%00")
        .send()
        .await
        .unwrap();
    let body = problem(response, 404).await;
    assert!(body["detail"]
        .as_str()
        .unwrap()
        .contains("no profile has the user_id"));
    assert_eq!(app.lookup("user_id", "ada").await["event_count"], 1);
}

/// Events of the resolver's queue not resolved yet.
async fn backlog(app: &TestApp) -> i64 {
    count(
        app,
        "SELECT count(*) FROM event_profiles WHERE resolved_seq IS NULL",
    )
    .await
}

#[tokio::test]
async fn profile_reads_show_acknowledged_messages_the_resolver_has_not_reached() {
    // Ten events a batch, at full speed: the burst takes the resolver well over a second to
    // clear, and what reads ask for joins its next batch.
    let app = spawn_app_with(Options { via_proxy: false }, |s| {
        s.identity.batch_size = 10;
        s.identity.busy_rest = 0.0;
    })
    .await;
    reads_see_what_is_pending(&app).await;
}

#[tokio::test]
async fn profile_reads_show_acknowledged_messages_while_the_resolver_yields_to_a_burst() {
    // The resolver rests after the first batch of the burst, for up to 2 s: what reads ask for
    // is resolved in batches of its own meanwhile.
    let app = spawn_app_with(Options { via_proxy: false }, |s| {
        s.identity.batch_size = 10;
        s.identity.busy_rest = 1000.0;
        s.identity.max_lag_ms = 2000;
    })
    .await;
    reads_see_what_is_pending(&app).await;
}

async fn reads_see_what_is_pending(app: &TestApp) {
    let (_, web) = app.create_source("Web shop", "web").await;
    let (_, desk) = app.create_source("Help desk", "support").await;
    send(app, &web, vec![json!({"type": "identify", "userId": "grace", "traits": {"email": "grace@example.com", "plan": "free"}, "timestamp": "2024-05-01T10:00:00Z"})]).await;
    app.settle().await;
    let grace = app.lookup("user_id", "grace").await;

    // A burst of other people's messages, then Ada signs up and Grace upgrades.
    for chunk in 0..3 {
        let batch = (0..500)
            .map(|i| json!({"type": "identify", "userId": format!("shopper-{chunk}-{i}"), "timestamp": "2024-05-02T09:00:00Z"}))
            .collect();
        send(app, &web, batch).await;
    }
    send(app, &web, vec![json!({"type": "identify", "anonymousId": "browser-ada", "traits": {"email": "Ada@Example.com", "name": "Ada"}, "timestamp": "2024-05-02T10:00:00Z"})]).await;
    send(app, &desk, vec![json!({"type": "identify", "userId": "grace", "traits": {"plan": "pro"}, "timestamp": "2024-05-02T10:01:00Z"})]).await;

    let ada = app.lookup("email", "ada@example.com").await;
    assert_eq!(
        ada["traits"]["name"], "Ada",
        "a new person is there at once"
    );
    let by_id = app
        .get_json(&format!("/v1/profiles/{}", grace["id"].as_str().unwrap()))
        .await;
    assert_eq!(by_id["traits"]["plan"], "pro", "by id, the upgrade shows");
    let by_email = app.lookup("email", "grace@example.com").await;
    assert_eq!(
        by_email["traits"]["plan"], "pro",
        "by another of her identifiers, too"
    );
    assert_eq!(by_email["id"], grace["id"]);
    let behind = backlog(app).await;
    assert!(
        behind > 0,
        "the reads did not wait for the burst ahead of them to be resolved"
    );

    // Once the backlog is cleared, resolution has come to the same profiles.
    app.settle().await;
    let ada_later = app.lookup("anonymous_id", "browser-ada").await;
    assert_eq!(ada_later["id"], ada["id"]);
    assert_eq!(
        app.lookup("user_id", "grace").await["traits"]["plan"],
        "pro"
    );
    assert_eq!(live_profiles(app).await, 1 + 1500 + 1);
}
