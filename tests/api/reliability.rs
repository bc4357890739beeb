//! Limits and hostile input: rate limits, time limits, body limits, load shedding, and input
//! built to break parsers or PostgreSQL. Every refusal is a clear 4xx (or a 503/429 a client
//! retries) and nothing is stored wrongly.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::{problem, spawn_app, spawn_app_with, Options, TestApp};

fn retry_after(response: &reqwest::Response) -> u64 {
    response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

async fn post_raw(app: &TestApp, path: &str, key: &str, body: Vec<u8>) -> reqwest::Response {
    app.client
        .post(app.url(path))
        .basic_auth(key, Some(""))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap()
}

fn nested_arrays(depth: usize) -> String {
    format!("{}{}", "[".repeat(depth), "]".repeat(depth))
}

// ---- limits ----------------------------------------------------------------------------------

#[tokio::test]
async fn a_source_over_its_rate_limit_is_told_when_to_retry() {
    let app = spawn_app_with(Options { via_proxy: false }, |s| {
        s.ingest.rate_limit_per_sec = 1;
        s.ingest.rate_limit_burst = 2;
    })
    .await;
    let (_, key) = app.create_source("Web", "web").await;
    let (_, other_key) = app.create_source("Mobile", "mobile").await;
    let body = json!({"userId": "u", "event": "E"});

    assert_eq!(
        app.post_tracking("/v1/track", &key, &body).await.status(),
        200
    );
    assert_eq!(
        app.post_tracking("/v1/track", &key, &body).await.status(),
        200
    );
    let throttled = app.post_tracking("/v1/track", &key, &body).await;
    assert!(retry_after(&throttled) >= 1, "SDKs are told when to retry");
    let detail = problem(throttled, 429).await["detail"].to_string();
    assert!(detail.contains("requests a second"), "{detail}");

    assert_eq!(
        app.post_tracking("/v1/track", &other_key, &body)
            .await
            .status(),
        200,
        "another source has a bucket of its own"
    );
    assert_eq!(app.metric("kizuna_requests_rate_limited_total").await, 1.0);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        app.post_tracking("/v1/track", &key, &body).await.status(),
        200,
        "the bucket refills"
    );
    assert_eq!(app.count_events().await, 4);
}

#[tokio::test]
async fn a_request_slower_than_the_time_limit_is_answered_503() {
    let app = spawn_app_with(Options { via_proxy: false }, |s| {
        s.server.request_timeout_secs = 1;
    })
    .await;
    let (_, key) = app.create_source("Web", "web").await;
    // A client that announces a body and then stalls (slowloris).
    let addr = app.address.trim_start_matches("http://").to_string();
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let auth = base64_basic(&key);
    let head = format!(
        "POST /v1/batch HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {auth}\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"batch\": ["
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let started = Instant::now();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), async {
        let mut buf = [0u8; 4096];
        loop {
            let n = stream.read(&mut buf).await.unwrap_or(0);
            answer.extend_from_slice(&buf[..n]);
            if n == 0 || answer.windows(4).any(|w| w == b"\r\n\r\n") {
                break;
            }
        }
    })
    .await;
    assert!(read.is_ok(), "the server answers a stalled request");
    assert!(started.elapsed() < Duration::from_secs(5));
    let answer = String::from_utf8_lossy(&answer).to_lowercase();
    assert!(answer.starts_with("http/1.1 503"), "{answer}");
    assert!(answer.contains("retry-after:"), "{answer}");
    assert!(
        answer.contains("content-type: application/problem+json"),
        "{answer}"
    );
    assert_eq!(app.metric("kizuna_requests_timed_out_total").await, 1.0);
}

fn base64_basic(key: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(format!("{key}:"))
}

#[tokio::test]
async fn oversized_admin_and_segment_bodies_are_refused_with_413() {
    let app = spawn_app().await;
    let huge = "x".repeat(1_100_000);
    for (path, body) in [
        ("/v1/sources", json!({"name": huge, "kind": "web"})),
        ("/v1/api-keys", json!({"name": huge, "scopes": ["admin"]})),
        (
            "/v1/segments",
            json!({"name": "big", "description": huge, "definition": {"identity": "email", "op": "exists"}}),
        ),
        (
            "/v1/segments/preview",
            json!({"definition": {"trait": "plan", "op": "eq", "value": huge}}),
        ),
    ] {
        let response = app
            .admin(reqwest::Method::POST, path)
            .json(&body)
            .send()
            .await
            .unwrap();
        let detail = problem(response, 413).await["detail"].to_string();
        assert!(detail.contains("bytes"), "{path}: {detail}");
    }
}

#[tokio::test]
async fn requests_beyond_the_connection_queue_are_shed_at_once() {
    let app = spawn_app_with(Options { via_proxy: false }, |s| {
        s.database.pool_size = 1;
        s.database.max_waiting = 1;
        s.identity.enabled = false;
    })
    .await;
    let (_, key) = app.create_source("Web", "web").await;
    let body = json!({"userId": "u", "event": "E"});
    assert_eq!(
        app.post_tracking("/v1/track", &key, &body).await.status(),
        200
    );

    // Hold the events table so the request that gets the only connection sits on it.
    let mut db = app.db().await;
    let lock = db.transaction().await.unwrap();
    lock.batch_execute("LOCK TABLE events IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let send = |app: &TestApp| {
        let request = app
            .client
            .post(app.url("/v1/track"))
            .basic_auth(&key, Some(""))
            .json(&body);
        tokio::spawn(async move { request.send().await.unwrap().status() })
    };
    let holding = send(&app);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let queued = send(&app);
    tokio::time::sleep(Duration::from_millis(300)).await;

    let started = Instant::now();
    let shed = app.post_tracking("/v1/track", &key, &body).await;
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "shed at once, not after the acquire timeout ({:?})",
        started.elapsed()
    );
    assert!(retry_after(&shed) >= 1);
    let detail = problem(shed, 503).await["detail"].to_string();
    assert!(
        detail.contains("waiting for a database connection"),
        "{detail}"
    );

    lock.commit().await.unwrap();
    assert_eq!(holding.await.unwrap(), 200);
    assert_eq!(queued.await.unwrap(), 200, "the queued request was served");
    assert_eq!(app.count_events().await, 3);
}

// ---- hostile input ---------------------------------------------------------------------------

#[tokio::test]
async fn deeply_nested_json_is_refused_with_400_and_the_server_stays_up() {
    let app = spawn_app().await;
    let (_, key) = app.create_source("Web", "web").await;
    let deep = nested_arrays(10_000);
    let single = format!(r#"{{"userId": "u", "event": "E", "properties": {{"x": {deep}}}}}"#);
    let batch = format!(
        r#"{{"batch": [{{"type": "track", "userId": "u", "event": "E", "properties": {{"x": {deep}}}}}]}}"#
    );
    let envelope = format!(r#"{{"batch": [], "context": {deep}}}"#);
    for (path, body) in [
        ("/v1/track", single),
        ("/v1/batch", batch),
        ("/v1/batch", envelope),
    ] {
        let response = post_raw(&app, path, &key, body.into_bytes()).await;
        problem(response, 400).await;
    }
    let definition = format!(r#"{{"definition": {{"not": {deep}}}}}"#);
    let response = app
        .admin(reqwest::Method::POST, "/v1/segments/preview")
        .header("content-type", "application/json")
        .body(definition)
        .send()
        .await
        .unwrap();
    problem(response, 400).await;

    // Nesting the JSON parser accepts but the definition language has no use for.
    let mut tree = json!({"identity": "email", "op": "exists"});
    for _ in 0..120 {
        tree = json!({"not": tree});
    }
    let response = app
        .admin(reqwest::Method::POST, "/v1/segments/preview")
        .json(&json!({"definition": tree}))
        .send()
        .await
        .unwrap();
    let detail = problem(response, 400).await["detail"].to_string();
    assert!(detail.contains("deep"), "{detail}");

    assert_eq!(app.count_events().await, 0);
    let health = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200, "the server survived");
}

#[tokio::test]
async fn numbers_that_cannot_be_stored_exactly_are_refused_not_rounded() {
    let app = spawn_app().await;
    let (_, key) = app.create_source("Web", "web").await;
    for (raw, field) in [
        (
            r#"{"userId": "u", "event": "E", "properties": {"big": 1e400}}"#,
            "",
        ),
        (
            r#"{"userId": "u", "event": "E", "properties": {"order_id": 123456789012345678901234}}"#,
            "order_id",
        ),
        (
            r#"{"batch": [{"type": "track", "userId": "u", "event": "E", "properties": {"n": -99999999999999999999}}]}"#,
            "n",
        ),
    ] {
        let path = if raw.contains("batch") {
            "/v1/batch"
        } else {
            "/v1/track"
        };
        let response = post_raw(&app, path, &key, raw.as_bytes().to_vec()).await;
        let detail = problem(response, 400).await["detail"].to_string();
        assert!(detail.contains(field), "{raw}: {detail}");
    }
    assert_eq!(app.count_events().await, 0);

    // The largest 64-bit integers and ordinary floats are kept exactly.
    let raw = r#"{"userId": "u", "event": "E", "properties": {"max": 18446744073709551615, "min": -9223372036854775808, "f": 1.5e300}}"#;
    let response = post_raw(&app, "/v1/track", &key, raw.as_bytes().to_vec()).await;
    assert_eq!(response.status(), 200);
    let row = app
        .db()
        .await
        .query_one(
            "SELECT properties->>'max', properties->>'min', (properties->>'f')::float8 FROM events",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "18446744073709551615");
    assert_eq!(row.get::<_, String>(1), "-9223372036854775808");
    assert_eq!(row.get::<_, f64>(2), 1.5e300);
}

#[tokio::test]
async fn the_extreme_doubles_are_stored_and_read_back_everywhere() {
    // PostgreSQL prints a jsonb number in full (309 digits for the largest double): reading it
    // back once failed, panicking the timeline and stalling identity resolution.
    let app = spawn_app().await;
    let (_, key) = app.create_source("Web", "web").await;
    let raw = r#"{"batch": [
        {"type": "identify", "userId": "u", "traits": {"score": 1.7976931348623157e308, "tiny": 5e-324},
         "context": {"x": -1.7976931348623157e308}},
        {"type": "track", "userId": "u", "event": "E", "properties": {"max": 1.7976931348623157e308}}
    ]}"#;
    let response = post_raw(&app, "/v1/batch", &key, raw.as_bytes().to_vec()).await;
    assert_eq!(response.status(), 200);
    app.settle().await;

    let profile = app.lookup("user_id", "u").await;
    assert_eq!(profile["traits"]["score"], f64::MAX);
    assert_eq!(profile["traits"]["tiny"], 5e-324);
    let id = profile["id"].as_str().unwrap();
    let timeline = app.get_json(&format!("/v1/profiles/{id}/events")).await;
    assert_eq!(timeline["items"][0]["properties"]["max"], f64::MAX);
    assert_eq!(timeline["items"][1]["context"]["x"], -f64::MAX);
}

#[tokio::test]
async fn invalid_utf8_bodies_are_refused_with_400() {
    let app = spawn_app().await;
    let (_, key) = app.create_source("Web", "web").await;
    let mut body = br#"{"userId": "u", "event": "E", "properties": {"s": ""#.to_vec();
    body.extend_from_slice(&[0xff, 0xfe, 0xc3]);
    body.extend_from_slice(br#""}}"#);
    problem(post_raw(&app, "/v1/track", &key, body.clone()).await, 400).await;
    let mut batch = br#"{"batch": ["#.to_vec();
    batch.extend_from_slice(&body[..body.len() - 1]);
    batch.extend_from_slice(br#", "type": "track"}]}"#);
    problem(post_raw(&app, "/v1/batch", &key, batch).await, 400).await;

    let mut admin = br#"{"name": ""#.to_vec();
    admin.extend_from_slice(&[0xc0, 0xaf]);
    admin.extend_from_slice(br#"", "kind": "web"}"#);
    let response = app
        .admin(reqwest::Method::POST, "/v1/sources")
        .header("content-type", "application/json")
        .body(admin)
        .send()
        .await
        .unwrap();
    problem(response, 400).await;
    assert_eq!(app.count_events().await, 0);
}

#[tokio::test]
async fn nul_characters_are_a_400_naming_the_field_never_a_500() {
    let app = spawn_app().await;
    let (_, key) = app.create_source("Web", "web").await;
    for (path, body, field) in [
        (
            "/v1/track",
            json!({"userId": "u", "event": "E", "properties": {"note": "a\u{0}b"}}),
            "properties",
        ),
        (
            "/v1/batch",
            json!({"batch": [{"type": "track", "userId": "u", "event": "E"}], "context": {"ip": "\u{0}"}}),
            "context",
        ),
        (
            "/v1/batch",
            json!({"batch": [{"type": "identify", "userId": "u", "traits": {"na\u{0}me": "x"}}]}),
            "traits",
        ),
    ] {
        let detail =
            problem(app.post_tracking(path, &key, &body).await, 400).await["detail"].to_string();
        assert!(detail.contains(field), "{body}: {detail}");
    }
    assert_eq!(app.count_events().await, 0);

    for (method, path, body, field) in [
        (
            reqwest::Method::POST,
            "/v1/sources",
            json!({"name": "a\u{0}b", "kind": "web"}),
            "name",
        ),
        (
            reqwest::Method::POST,
            "/v1/segments",
            json!({"name": "s", "description": "a\u{0}b", "definition": {"identity": "email", "op": "exists"}}),
            "description",
        ),
        (
            reqwest::Method::POST,
            "/v1/segments",
            json!({"name": "s", "definition": {"trait": "plan", "op": "eq", "value": "x\u{0}"}}),
            "definition",
        ),
    ] {
        let response = app.admin(method, path).json(&body).send().await.unwrap();
        let detail = problem(response, 400).await["detail"].to_string();
        assert!(detail.contains(field), "{path}: {detail}");
    }
    for path in [
        "/v1/profiles/lookup?user_id=%00",
        "/v1/profiles/lookup?email=a%00%40example.com",
        "/v1/profiles/lookup?loyalty%00card=1",
    ] {
        let response = app.admin(reqwest::Method::GET, path).send().await.unwrap();
        let status = response.status().as_u16();
        assert!(status == 400 || status == 404, "{path}: {status}");
        problem(response, status).await;
    }
}

#[tokio::test]
async fn sql_looking_strings_are_stored_verbatim_and_do_nothing() {
    let app = spawn_app().await;
    let evil = "Robert'); DROP TABLE events; -- \" OR 1=1; SELECT pg_sleep(10) $$ \\";
    let (source_id, key) = app.create_source(evil, "web").await;
    let message = json!({
        "messageId": evil,
        "userId": evil,
        "anonymousId": evil,
        "event": evil,
        "properties": {evil: evil, "list": [evil]},
        "context": {"traits": {"email": format!("{evil}@example.com")}, "page": {"url": evil}},
        "integrations": {evil: true},
    });
    let started = Instant::now();
    assert_eq!(
        app.post_tracking("/v1/track", &key, &message)
            .await
            .status(),
        200
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "nothing ran pg_sleep"
    );
    app.settle().await;

    let stored = app
        .db()
        .await
        .query_one(
            "SELECT message_id, user_id, anonymous_id, event, properties, context FROM events",
            &[],
        )
        .await
        .unwrap();
    for i in 0..4 {
        assert_eq!(stored.get::<_, String>(i), evil);
    }
    assert_eq!(stored.get::<_, Value>(4)[evil], evil);
    assert_eq!(stored.get::<_, Value>(5)["page"]["url"], evil);

    let profile = app.lookup("user_id", evil).await;
    let id = profile["id"].as_str().unwrap();
    let timeline = app.get_json(&format!("/v1/profiles/{id}/events")).await;
    assert_eq!(timeline["items"][0]["event"], evil);
    let source = app.get_json(&format!("/v1/sources/{source_id}")).await;
    assert_eq!(source["name"], evil);

    let segment = app
        .admin(reqwest::Method::POST, "/v1/segments")
        .json(&json!({"name": evil, "description": evil,
                       "definition": {"event": evil, "within": "30d"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(segment.status(), 201);
    let segment: Value = segment.json().await.unwrap();
    assert_eq!(segment["name"], evil);
    assert_eq!(segment["description"], evil);
    let evaluated = app
        .admin(
            reqwest::Method::POST,
            &format!("/v1/segments/{}/evaluate", segment["id"].as_str().unwrap()),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(evaluated.status(), 200);
    let evaluated: Value = evaluated.json().await.unwrap();
    assert_eq!(
        evaluated["count"], 1,
        "the event name matched as plain text"
    );

    // SQL segment conditions are parsed against the snapshot, never sent to PostgreSQL.
    for sql in [
        "1=1; DROP TABLE events",
        "traits.plan = 'x' OR pg_sleep(10) IS NULL",
    ] {
        let response = app
            .admin(reqwest::Method::POST, "/v1/segments/preview")
            .json(&json!({"definition": {"sql": sql}}))
            .send()
            .await
            .unwrap();
        problem(response, 400).await;
    }
    let kind = urlencoding::encode("x') OR 1=1; DROP TABLE identities; --");
    let response = app
        .admin(
            reqwest::Method::GET,
            &format!("/v1/profiles/lookup?{kind}=1"),
        )
        .send()
        .await
        .unwrap();
    problem(response, 404).await;
    assert_eq!(app.count_events().await, 1, "the events table is intact");
    assert_eq!(app.lookup("user_id", evil).await["id"], profile["id"]);
}

#[tokio::test]
async fn path_traversal_in_ids_is_a_4xx_problem() {
    let app = spawn_app().await;
    for path in [
        "/v1/sources/..%2F..%2Fetc%2Fpasswd",
        "/v1/sources/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
        "/v1/profiles/..%2F..%2Fetc%2Fpasswd",
        "/v1/profiles/..%252F..%252Fetc%252Fpasswd/events",
        "/v1/profiles/%2e%2e/merges",
        "/v1/segments/..%2F..%2Fetc%2Fpasswd/members",
        "/v1/segments/..%5C..%5Cwindows%5Cwin.ini",
        "/v1/computed-traits/..%2F..%2Fetc%2Fpasswd",
        "/v1/../../etc/passwd",
    ] {
        let response = app.admin(reqwest::Method::GET, path).send().await.unwrap();
        let status = response.status().as_u16();
        assert!((400..500).contains(&status), "{path}: {status}");
        problem(response, status).await;
    }
    let response = app
        .admin(
            reqwest::Method::DELETE,
            "/v1/computed-traits/..%2F..%2Fetc%2Fpasswd",
        )
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    assert!((400..500).contains(&status), "{status}");
}

// ---- a real database outage ------------------------------------------------------------------

/// What one load client saw: acknowledged message ids, and any answer a client must not get.
#[derive(Default)]
struct LoadReport {
    acknowledged: Vec<String>,
    unavailable: usize,
    wrong: Vec<String>,
}

/// Sends batches of two messages until `stop`, retrying a refused batch as an SDK does
/// (same message ids, after a short pause).
async fn ingest_load(
    url: String,
    key: String,
    client_no: usize,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> LoadReport {
    let client = reqwest::Client::new();
    let mut report = LoadReport::default();
    let mut b = 0;
    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
        let ids = [
            format!("c{client_no}-b{b}-0"),
            format!("c{client_no}-b{b}-1"),
        ];
        let body = json!({"batch": [
            {"type": "track", "messageId": ids[0], "userId": format!("u{client_no}"), "event": "Tick"},
            {"type": "track", "messageId": ids[1], "anonymousId": format!("a{client_no}"), "event": "Tock"},
        ]});
        let started = Instant::now();
        let sent = client
            .post(&url)
            .basic_auth(&key, Some(""))
            .json(&body)
            .timeout(Duration::from_secs(15))
            .send()
            .await;
        let took = started.elapsed();
        if took > Duration::from_secs(10) {
            report.wrong.push(format!("an answer took {took:?}"));
        }
        match sent {
            Ok(r) if r.status() == 200 => {
                report.acknowledged.extend(ids);
                b += 1;
            }
            Ok(r) if r.status() == 503 && r.headers().contains_key("retry-after") => {
                report.unavailable += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Ok(r) => report.wrong.push(format!("answered {}", r.status())),
            Err(e) => report.wrong.push(format!("no answer: {e}")),
        }
    }
    report
}

#[tokio::test]
async fn stopping_postgresql_under_load_gives_prompt_503s_and_restarting_it_recovers_everything() {
    if !std::path::Path::new("/usr/lib/postgresql").exists() {
        eprintln!(
            "no PostgreSQL binaries under /usr/lib/postgresql: a private cluster cannot run here"
        );
        return;
    }
    // Arrange: a PostgreSQL cluster of this test's own, and Kizuna on it.
    let dir = std::env::temp_dir().join(format!("kizuna-outage-{}", uuid::Uuid::new_v4().simple()));
    let data = dir.join("postgres");
    let cluster = std::sync::Arc::new(
        tokio::task::spawn_blocking(move || kizuna::db::embedded::EmbeddedPostgres::start(&data))
            .await
            .unwrap()
            .expect("a private cluster starts"),
    );
    let port = cluster.port();
    let app = spawn_app_with(Options { via_proxy: false }, |s| {
        s.database.url = format!("postgres://postgres@127.0.0.1:{port}/kizuna_outage");
    })
    .await;
    let (_, key) = app.create_source("Web", "web").await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients: Vec<_> = (0..4)
        .map(|c| {
            tokio::spawn(ingest_load(
                app.url("/v1/batch"),
                key.clone(),
                c,
                stop.clone(),
            ))
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Act 1: PostgreSQL stops.
    let c = cluster.clone();
    tokio::task::spawn_blocking(move || c.stop()).await.unwrap();
    let stopped_at = Instant::now();
    let readyz = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert!(stopped_at.elapsed() < Duration::from_secs(10));
    problem(readyz, 503).await;
    let ingest = app
        .post_tracking(
            "/v1/track",
            &key,
            &json!({"userId": "x", "event": "During"}),
        )
        .await;
    assert!(
        stopped_at.elapsed() < Duration::from_secs(10),
        "answered within 10 s"
    );
    assert!(retry_after(&ingest) > 0);
    problem(ingest, 503).await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Act 2: PostgreSQL comes back on the same port; Kizuna is not restarted.
    let c = cluster.clone();
    tokio::task::spawn_blocking(move || c.start_again())
        .await
        .unwrap()
        .expect("the cluster starts again");
    let back_at = Instant::now();
    loop {
        let ready = app.client.get(app.url("/readyz")).send().await.unwrap();
        if ready.status() == 200 {
            break;
        }
        assert!(
            back_at.elapsed() < Duration::from_secs(30),
            "Kizuna did not recover"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut acknowledged = Vec::new();
    let mut unavailable = 0;
    for client in clients {
        let report = client.await.unwrap();
        assert!(report.wrong.is_empty(), "{:?}", report.wrong);
        acknowledged.extend(report.acknowledged);
        unavailable += report.unavailable;
    }

    // Assert: the clients saw 503s during the outage, and every acknowledged message is stored
    // exactly once.
    assert!(unavailable > 0, "the load ran through the outage");
    let (pg, conn) = tokio_postgres::connect(
        &format!("postgres://postgres@127.0.0.1:{port}/kizuna_outage"),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let stored: std::collections::HashMap<String, i64> = pg
        .query("SELECT message_id, count(*) FROM events GROUP BY 1", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    for id in &acknowledged {
        assert_eq!(stored.get(id), Some(&1), "{id} is stored once");
    }
    let after = app
        .post_tracking("/v1/track", &key, &json!({"userId": "x", "event": "After"}))
        .await;
    assert_eq!(after.status(), 200, "ingest works again");

    drop((pg, app));
    tokio::task::spawn_blocking(move || cluster.stop())
        .await
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn an_event_whose_json_cannot_be_read_is_still_resolved_and_shown() {
    // Arrange: an identify stored by another writer with a number no double can hold (PostgreSQL
    // jsonb keeps it; our ingest refuses it), then an ordinary event after it.
    let app = spawn_app().await;
    let (source_id, key) = app.create_source("Web", "web").await;
    app.db()
        .await
        .execute(
            "WITH e AS (
               INSERT INTO events (source_id, message_id, type, user_id, ts, received_at, traits)
               VALUES ($1::text::uuid, 'legacy-1', 'identify', 'legacy', now(), now(),
                       '{\"score\": 1e400, \"plan\": \"pro\"}')
               RETURNING seq, ts)
             INSERT INTO event_profiles (seq, ts) SELECT seq, ts FROM e",
            &[&source_id],
        )
        .await
        .unwrap();
    let after = json!({"userId": "fresh", "event": "Signed Up"});
    assert_eq!(
        app.post_tracking("/v1/track", &key, &after).await.status(),
        200
    );

    // Act + Assert: resolution goes on past it, and its timeline answers.
    app.settle().await;
    assert_eq!(app.lookup("user_id", "fresh").await["event_count"], 1);
    let legacy = app.lookup("user_id", "legacy").await;
    assert_eq!(legacy["event_count"], 1);
    let id = legacy["id"].as_str().unwrap();
    let timeline = app.get_json(&format!("/v1/profiles/{id}/events")).await;
    assert_eq!(timeline["items"][0]["type"], "identify");
}

#[tokio::test]
async fn a_trait_with_an_empty_name_does_not_break_exports() {
    // Found by the fuzz run: `{"traits": {"": …}}` made every profile export a 500.
    let app = spawn_app().await;
    let (_, key) = app.create_source("Web", "web").await;
    let identify =
        json!({"userId": "u", "traits": {"": "blank", "plan": "pro", "email": "u@example.com"}});
    assert_eq!(
        app.post_tracking("/v1/identify", &key, &identify)
            .await
            .status(),
        200
    );
    app.settle().await;
    let segment = app
        .admin(reqwest::Method::POST, "/v1/segments")
        .json(&json!({"name": "Emails", "definition": {"identity": "email", "op": "exists"}}))
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    let segment_id = segment["id"].as_str().unwrap();
    let evaluated = app
        .admin(
            reqwest::Method::POST,
            &format!("/v1/segments/{segment_id}/evaluate"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(evaluated.status(), 200);

    for path in [
        "/v1/exports/profiles?format=ndjson".to_string(),
        format!("/v1/segments/{segment_id}/export?format=ndjson"),
    ] {
        let response = app.admin(reqwest::Method::GET, &path).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
        let body = response.text().await.unwrap();
        let row: Value = serde_json::from_str(body.lines().next().unwrap()).unwrap();
        assert_eq!(row["trait_plan"], "pro", "{path}: {row}");
        let traits = match &row["traits"] {
            Value::String(text) => serde_json::from_str(text).unwrap(),
            other => other.clone(),
        };
        assert_eq!(traits[""], "blank", "{path}: the JSON keeps it: {row}");
    }
    let unknown = app
        .admin(
            reqwest::Method::GET,
            &format!("/v1/segments/{segment_id}/export?format=ndjson&fields=%C2%B5"),
        )
        .send()
        .await
        .unwrap();
    problem(unknown, 400).await;
}
