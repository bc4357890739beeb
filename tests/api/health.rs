//! Customer health: the built-in computed traits on profiles and in segments, and the report of
//! `GET /v1/metrics/health`, against a small shop whose figures are worked out by hand below.

use chrono::{DateTime, Duration, SubsecRound, Utc};
use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::{problem, spawn_app, TestApp};

/// Event times, whole seconds, relative to when the shop was built.
struct Clock(DateTime<Utc>);

impl Clock {
    fn new() -> Clock {
        Clock(Utc::now().trunc_subsecs(0))
    }

    fn ago(&self, days: i64) -> DateTime<Utc> {
        self.0 - Duration::days(days)
    }

    /// `minutes` after `days` ago.
    fn ago_then(&self, days: i64, minutes: i64) -> DateTime<Utc> {
        self.ago(days) + Duration::minutes(minutes)
    }
}

fn track(user: &str, event: &str, properties: Value, at: DateTime<Utc>) -> Value {
    json!({"type": "track", "userId": user, "event": event, "properties": properties, "timestamp": at.to_rfc3339()})
}

fn order(user: &str, properties: Value, at: DateTime<Utc>) -> Value {
    track(user, "Order Completed", properties, at)
}

fn survey(user: &str, kind: &str, score: i64, at: DateTime<Utc>) -> Value {
    track(
        user,
        "Survey Responded",
        json!({"survey": kind, "score": score}),
        at,
    )
}

fn ticket(user: &str, event: &str, id: &str, at: DateTime<Utc>) -> Value {
    track(user, event, json!({"ticket_id": id}), at)
}

async fn send(app: &TestApp, batch: Vec<Value>) {
    let (_, key) = app.create_source("Shop", "web").await;
    let response = app
        .post_tracking("/v1/batch", &key, &json!({"batch": batch}))
        .await;
    assert_eq!(response.status(), 200);
    app.settle().await;
}

/// Six people, no refunds anywhere:
///
/// | who | orders (days ago: value)        | NPS (latest) | CSAT | tickets (minutes to answer) | last seen |
/// |-----|---------------------------------|--------------|------|-----------------------------|-----------|
/// | ada | 70: 100, 40: 200, 10: 300       | 10 (was 3)   | 5    | 30 (reply before resolve), 90 | 5 days  |
/// | bob | 100: total 50 (no revenue)      | 8            | 3    | one never answered          | 3 days    |
/// | cy  | 200: 1000, 180: 1000            | 2            | –    | –                           | 170 days  |
/// | dee | 65: 40, 45: 40                  | 6            | 4    | 15                          | 11 days   |
/// | fay | 45: "80" (a string)             | –            | –    | –                           | 45 days   |
/// | eve | –                               | –            | –    | –                           | 2 days    |
///
/// Churn (days since the last order ÷ the median interval between orders, 90 days for one
/// order): ada 10/30 none, bob 100/90 low, cy 180/20 high, dee 45/20 medium, fay 45/90 none.
///
/// RFM among the five buyers (quintile = 1 + ⌊5 × (rank − 1) / 5⌋, ties share the lowest rank):
/// recency days cy 180, bob 100, dee 45 = fay 45, ada 10 → 1, 2, 3, 3, 5;
/// frequency bob 1 = fay 1, cy 2 = dee 2, ada 3 → 1, 1, 3, 3, 5;
/// monetary bob 50, dee 80 = fay 80, ada 600, cy 2000 → 1, 2, 2, 4, 5.
async fn shop() -> (TestApp, Clock) {
    let app = spawn_app().await;
    let t = Clock::new();
    let batch = vec![
        order("ada", json!({"revenue": 100}), t.ago(70)),
        order("ada", json!({"revenue": 200, "total": 999}), t.ago(40)),
        order("ada", json!({"revenue": 300}), t.ago(10)),
        survey("ada", "nps", 3, t.ago(60)),
        survey("ada", "NPS", 10, t.ago(5)),
        survey("ada", "csat", 5, t.ago(5)),
        ticket("ada", "Ticket Created", "t1", t.ago(20)),
        ticket("ada", "Ticket Replied", "t1", t.ago_then(20, 30)),
        ticket("ada", "Ticket Resolved", "t1", t.ago_then(20, 120)),
        ticket("ada", "Ticket Created", "t2", t.ago(8)),
        ticket("ada", "Ticket Resolved", "t2", t.ago_then(8, 90)),
        order("bob", json!({"total": 50}), t.ago(100)),
        survey("bob", "nps", 8, t.ago(50)),
        survey("bob", "csat", 3, t.ago(50)),
        ticket("bob", "Ticket Created", "t3", t.ago(3)),
        order("cy", json!({"revenue": 1000}), t.ago(200)),
        order("cy", json!({"revenue": 1000}), t.ago(180)),
        survey("cy", "nps", 2, t.ago(170)),
        order("dee", json!({"revenue": 40}), t.ago(65)),
        order("dee", json!({"revenue": 40}), t.ago(45)),
        survey("dee", "nps", 6, t.ago(44)),
        survey("dee", "csat", 4, t.ago(44)),
        ticket("dee", "Ticket Created", "t4", t.ago(12)),
        ticket("dee", "Ticket Replied", "t4", t.ago_then(12, 15)),
        order("fay", json!({"revenue": "80"}), t.ago(45)),
        json!({"type": "page", "userId": "eve", "name": "Home", "timestamp": t.ago(2).to_rfc3339()}),
    ];
    send(&app, batch).await;
    (app, t)
}

async fn health(app: &TestApp, query: &str) -> Value {
    app.get_json(&format!("/v1/metrics/health{query}")).await
}

async fn segment(app: &TestApp, definition: Value) -> String {
    let response = app
        .admin(Method::POST, "/v1/segments")
        .json(&json!({"name": "health", "definition": definition}))
        .send()
        .await
        .unwrap();
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert_eq!(status, 201, "{body}");
    body["id"].as_str().unwrap().to_string()
}

/// The computed values of `user` after a refresh.
async fn computed(app: &TestApp, user: &str) -> Value {
    app.lookup("user_id", user).await["computed"].clone()
}

async fn refresh(app: &TestApp) {
    let response = app
        .admin(Method::POST, "/v1/computed-traits/refresh")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn the_health_report_over_everyone_matches_the_hand_computed_figures() {
    let (app, _) = shop().await;

    let report = health(&app, "").await;

    assert_eq!(
        report,
        json!({
            "profiles": 6,
            // ada promotes; bob is passive; cy and dee detract: (1 − 2) / 4.
            "nps": {"score": -25.0, "promoters": 1, "passives": 1, "detractors": 2, "responses": 4},
            // ada 5 and dee 4 of ada, bob, dee.
            "csat": {"score": 66.7, "responses": 3},
            // 600, 50, 2000, 80, 80.
            "clv": {"avg": 562.0, "median": 80.0, "total": 2810.0},
            // dee medium, cy high, of five customers.
            "churn": {"at_risk": 1, "churned": 1, "rate": 20.0},
            // Answered tickets 30, 90, 15; bob's unanswered ticket does not count.
            "first_response_minutes": {"median": 30.0},
            "loyalty_tiers": {"bronze": 3, "silver": 1, "gold": 1, "platinum": 0}
        })
    );
}

#[tokio::test]
async fn every_built_in_shows_on_the_profile_lookup() {
    let (app, t) = shop().await;

    refresh(&app).await;

    let ada = computed(&app, "ada").await;
    let last_order: DateTime<Utc> = ada["last_order_at"].as_str().unwrap().parse().unwrap();
    assert_eq!(last_order, t.ago(10));
    assert_eq!(
        ada,
        json!({
            "clv": 600.0, "orders": 3, "avg_order_value": 200.0, "last_order_at": ada["last_order_at"],
            "nps_score": 10, "nps_group": "promoter", "csat_score": 5,
            "first_response_minutes": 60.0, "days_since_last_seen": 5, "churn_risk": "none",
            "rfm": "554", "rfm_recency": 5, "rfm_frequency": 5, "rfm_monetary": 4,
            "loyalty_tier": "silver"
        })
    );
    // Someone who never bought, answered or asked anything has only their recency.
    assert_eq!(
        computed(&app, "eve").await,
        json!({"days_since_last_seen": 2})
    );
}

#[tokio::test]
async fn a_customer_with_one_order_is_judged_against_the_one_time_buyer_interval() {
    let (app, _) = shop().await;

    refresh(&app).await;

    let bob = computed(&app, "bob").await;
    // No `revenue`: the order's `total` counts. 100 days without an order, against 90 assumed.
    assert_eq!(
        (
            &bob["clv"],
            &bob["orders"],
            &bob["avg_order_value"],
            &bob["churn_risk"]
        ),
        (&json!(50.0), &json!(1), &json!(50.0), &json!("low"))
    );
    // His only ticket was never answered: no response time at all, rather than zero.
    assert!(bob.get("first_response_minutes").is_none(), "{bob}");
    assert_eq!(bob["nps_group"], "passive");
    // A revenue sent as a string counts as the number it holds.
    let fay = computed(&app, "fay").await;
    assert_eq!(
        (&fay["clv"], &fay["churn_risk"]),
        (&json!(80.0), &json!("none"))
    );
}

#[tokio::test]
async fn customers_tied_on_a_figure_land_in_the_same_quintile() {
    let (app, _) = shop().await;

    refresh(&app).await;

    let mut codes = Vec::new();
    for user in ["ada", "bob", "cy", "dee", "fay"] {
        let c = computed(&app, user).await;
        codes.push((
            user,
            c["rfm"].as_str().unwrap().to_string(),
            c["rfm_recency"].as_i64().unwrap(),
            c["rfm_frequency"].as_i64().unwrap(),
            c["rfm_monetary"].as_i64().unwrap(),
        ));
    }
    assert_eq!(
        codes,
        vec![
            ("ada", "554".to_string(), 5, 5, 4),
            ("bob", "211".to_string(), 2, 1, 1),
            ("cy", "135".to_string(), 1, 3, 5),
            // dee and fay both last bought 45 days ago and both spent 80.
            ("dee", "332".to_string(), 3, 3, 2),
            ("fay", "312".to_string(), 3, 1, 2),
        ]
    );
    assert!(computed(&app, "eve").await.get("rfm").is_none());
}

#[tokio::test]
async fn churn_risk_and_loyalty_tiers_follow_each_customers_own_rhythm() {
    let (app, _) = shop().await;

    refresh(&app).await;

    let mut seen = Vec::new();
    for user in ["ada", "bob", "cy", "dee", "fay"] {
        let c = computed(&app, user).await;
        seen.push((
            user,
            c["churn_risk"].as_str().unwrap().to_string(),
            c["loyalty_tier"].as_str().unwrap().to_string(),
        ));
    }
    let expected: Vec<(&str, String, String)> = [
        ("ada", "none", "silver"),
        ("bob", "low", "bronze"),
        ("cy", "high", "gold"),
        ("dee", "medium", "bronze"),
        ("fay", "none", "bronze"),
    ]
    .into_iter()
    .map(|(u, c, t)| (u, c.to_string(), t.to_string()))
    .collect();
    assert_eq!(seen, expected);
}

#[tokio::test]
async fn a_segment_over_nps_group_selects_the_detractors_and_reports_on_them() {
    let (app, t) = shop().await;
    let detractors = segment(
        &app,
        json!({"computed": "nps_group", "op": "eq", "value": "detractor"}),
    )
    .await;

    let report = health(&app, &format!("?segment_id={detractors}")).await;

    // cy and dee.
    assert_eq!(
        report,
        json!({
            "profiles": 2,
            "nps": {"score": -100.0, "promoters": 0, "passives": 0, "detractors": 2, "responses": 2},
            "csat": {"score": 100.0, "responses": 1},
            "clv": {"avg": 1040.0, "median": 1040.0, "total": 2080.0},
            "churn": {"at_risk": 1, "churned": 1, "rate": 50.0},
            "first_response_minutes": {"median": 15.0},
            "loyalty_tiers": {"bronze": 1, "silver": 0, "gold": 1, "platinum": 0}
        })
    );
    let evaluated: Value = app
        .admin(Method::POST, &format!("/v1/segments/{detractors}/evaluate"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(evaluated["count"], 2, "{evaluated}");
    // Times compare with RFC 3339 text: only ada ordered in the last 15 days.
    let recent = segment(
        &app,
        json!({"computed": "last_order_at", "op": "gte", "value": t.ago(15).to_rfc3339()}),
    )
    .await;
    assert_eq!(
        health(&app, &format!("?segment_id={recent}")).await["clv"]["total"],
        600.0
    );
    // Built-ins work in SQL conditions too.
    let churned = segment(
        &app,
        json!({"sql": "computed.churn_risk = 'high' AND computed.clv >= 2000"}),
    )
    .await;
    assert_eq!(
        health(&app, &format!("?segment_id={churned}")).await["profiles"],
        1
    );
}

#[tokio::test]
async fn without_survey_answers_nps_and_csat_are_null_not_zero() {
    let (app, _) = shop().await;
    let silent = segment(&app, json!({"computed": "nps_score", "op": "not_exists"})).await;

    let report = health(&app, &format!("?segment_id={silent}")).await;

    // eve (no orders) and fay (one order of 80, 45 of her 90 days: no risk).
    assert_eq!(
        report,
        json!({
            "profiles": 2,
            "nps": {"score": null, "promoters": 0, "passives": 0, "detractors": 0, "responses": 0},
            "csat": {"score": null, "responses": 0},
            "clv": {"avg": 80.0, "median": 80.0, "total": 80.0},
            "churn": {"at_risk": 0, "churned": 0, "rate": 0.0},
            "first_response_minutes": {"median": null},
            "loyalty_tiers": {"bronze": 1, "silver": 0, "gold": 0, "platinum": 0}
        })
    );
}

#[tokio::test]
async fn a_segment_with_no_members_reports_zeros_and_nulls() {
    let (app, _) = shop().await;
    let nobody = segment(
        &app,
        json!({"computed": "clv", "op": "gt", "value": 1000000}),
    )
    .await;

    let report = health(&app, &format!("?segment_id={nobody}")).await;

    assert_eq!(
        report,
        json!({
            "profiles": 0,
            "nps": {"score": null, "promoters": 0, "passives": 0, "detractors": 0, "responses": 0},
            "csat": {"score": null, "responses": 0},
            "clv": {"avg": null, "median": null, "total": 0.0},
            "churn": {"at_risk": 0, "churned": 0, "rate": null},
            "first_response_minutes": {"median": null},
            "loyalty_tiers": {"bronze": 0, "silver": 0, "gold": 0, "platinum": 0}
        })
    );
}

#[tokio::test]
async fn an_empty_database_reports_zeros_and_nulls() {
    let app = spawn_app().await;

    let report = health(&app, "").await;

    assert_eq!(report["profiles"], 0);
    assert_eq!(report["nps"]["score"], Value::Null);
    assert_eq!(report["clv"]["total"], 0.0);
}

#[tokio::test]
async fn refunds_come_off_the_lifetime_value_but_not_the_order_count() {
    let app = spawn_app().await;
    let t = Clock::new();
    send(
        &app,
        vec![
            order("gus", json!({"revenue": 100}), t.ago(20)),
            order("gus", json!({"revenue": 50}), t.ago(10)),
            track("gus", "Order Refunded", json!({"revenue": 30}), t.ago(5)),
            // A refund larger than what was spent leaves nothing, not a debt.
            order("hal", json!({"total": 20}), t.ago(20)),
            track("hal", "Order Refunded", json!({"total": 50}), t.ago(5)),
        ],
    )
    .await;

    refresh(&app).await;

    let gus = computed(&app, "gus").await;
    assert_eq!(
        (&gus["clv"], &gus["orders"], &gus["avg_order_value"]),
        (&json!(120.0), &json!(2), &json!(75.0))
    );
    let hal = computed(&app, "hal").await;
    assert_eq!(
        (&hal["clv"], &hal["loyalty_tier"]),
        (&json!(0.0), &json!("bronze"))
    );
    assert_eq!(health(&app, "").await["clv"]["total"], 120.0);
}

#[tokio::test]
async fn the_report_needs_segments_read_and_a_known_segment() {
    let (app, _) = shop().await;
    let created: Value = app
        .admin(Method::POST, "/v1/api-keys")
        .json(&json!({"name": "profiles only", "scopes": ["profiles:read"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = created["token"].as_str().unwrap();

    let forbidden = app
        .client
        .get(app.url("/v1/metrics/health?segment_id=not-a-uuid"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let unknown = app
        .admin(
            Method::GET,
            &format!("/v1/metrics/health?segment_id={}", uuid::Uuid::new_v4()),
        )
        .send()
        .await
        .unwrap();
    let malformed = app
        .admin(Method::GET, "/v1/metrics/health?segment_id=42")
        .send()
        .await
        .unwrap();

    let openapi = app.get_json("/openapi.json").await;

    problem(forbidden, 403).await;
    problem(unknown, 404).await;
    assert_eq!(
        openapi["paths"]["/v1/metrics/health"]["get"]["security"],
        json!([{"bearer": ["segments:read"]}])
    );
    let body = problem(malformed, 400).await;
    assert!(
        body["detail"].as_str().unwrap().contains("segment_id"),
        "{body}"
    );
}

#[tokio::test]
async fn a_computed_trait_cannot_take_a_built_in_name() {
    let app = spawn_app().await;

    let response = app
        .admin(Method::POST, "/v1/computed-traits")
        .json(&json!({"name": "nps_group", "kind": "last", "event": "Survey Responded", "property": "score"}))
        .send()
        .await
        .unwrap();

    let body = problem(response, 409).await;
    assert!(
        body["detail"].as_str().unwrap().contains("built-in"),
        "{body}"
    );
}

#[tokio::test]
async fn the_report_follows_new_events_after_it_was_first_computed() {
    let (app, t) = shop().await;
    assert_eq!(health(&app, "").await["nps"]["responses"], 4);

    // eve answers NPS for the first time and buys; the next report sees both.
    send(
        &app,
        vec![
            survey("eve", "nps", 9, t.ago(1)),
            order("eve", json!({"revenue": 190}), t.ago(1)),
        ],
    )
    .await;
    let report = health(&app, "").await;

    assert_eq!(
        report["nps"],
        json!({"score": 0.0, "promoters": 2, "passives": 1, "detractors": 2, "responses": 5})
    );
    assert_eq!(report["clv"]["total"], 3000.0);
}

#[tokio::test]
async fn orders_an_anonymous_visitor_placed_count_for_the_customer_they_turn_out_to_be() {
    let app = spawn_app().await;
    let t = Clock::new();
    let anonymous = |event: &str, properties: Value, at: DateTime<Utc>| json!({"type": "track", "anonymousId": "anon-gus", "event": event, "properties": properties, "timestamp": at.to_rfc3339()});
    send(
        &app,
        vec![
            order("gus", json!({"revenue": 50}), t.ago(30)),
            anonymous("Order Completed", json!({"revenue": 100}), t.ago(20)),
            anonymous(
                "Survey Responded",
                json!({"survey": "nps", "score": 10}),
                t.ago(19),
            ),
        ],
    )
    .await;
    // The built-ins are computed while the two are still strangers: two customers.
    let before = health(&app, "").await;
    assert_eq!(before["profiles"], 2);
    assert_eq!(before["clv"]["total"], 150.0);

    // gus logs in on the browser: the visitor's profile merges into his, after the snapshot
    // already holds its order and answer.
    send(
        &app,
        vec![json!({"type": "identify", "userId": "gus", "anonymousId": "anon-gus", "timestamp": t.ago(1).to_rfc3339()})],
    )
    .await;
    let after = health(&app, "").await;
    assert_eq!(after["profiles"], 1);
    assert_eq!(after["clv"]["total"], 150.0);
    assert_eq!(after["nps"]["promoters"], 1);

    refresh(&app).await;
    let gus = computed(&app, "gus").await;
    assert_eq!(gus["clv"], 150.0);
    assert_eq!(gus["orders"], 2);
    assert_eq!(gus["nps_group"], "promoter");
    // 30 and 20 days ago: one gap of 10 days, the last order 20 days ago → overdue, "medium".
    assert_eq!(gus["churn_risk"], "medium");
}
