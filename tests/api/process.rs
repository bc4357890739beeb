//! The `kizuna` binary as an operator runs it: signals, and the embedded default database.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::helpers::{pg_addr, pg_client};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Server {
    child: Child,
    base: String,
}

impl Server {
    fn start(envs: &[(&str, String)]) -> Server {
        let port = free_port();
        let mut command = Command::new(env!("CARGO_BIN_EXE_kizuna"));
        command
            .arg("serve")
            .env("KIZUNA__SERVER__BIND", format!("127.0.0.1:{port}"))
            .env("KIZUNA__AUTH__ADMIN_TOKEN", "t")
            .env("KIZUNA__LOG__LEVEL", "warn")
            .env_remove("DATABASE_URL")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        for (k, v) in envs {
            command.env(k, v);
        }
        Server {
            child: command.spawn().unwrap(),
            base: format!("http://127.0.0.1:{port}"),
        }
    }

    async fn wait_ready(&mut self) {
        let client = reqwest::Client::new();
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(60) {
            if let Ok(r) = client.get(format!("{}/readyz", self.base)).send().await {
                if r.status() == 200 {
                    return;
                }
            }
            assert!(
                self.child.try_wait().unwrap().is_none(),
                "the server exited early"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("not ready within 60 s");
    }

    /// Sends SIGTERM and waits for a clean exit.
    fn terminate(mut self) {
        // SAFETY: kill with a pid we spawned and a valid signal number.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "exit status {status}");
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "no exit within 30 s of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    async fn send_one_event(&self) {
        let client = reqwest::Client::new();
        let source: Value = client
            .post(format!("{}/v1/sources", self.base))
            .bearer_auth("t")
            .json(&json!({"name": "Web", "kind": "web"}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let response = client
            .post(format!("{}/v1/track", self.base))
            .basic_auth(source["write_key"].as_str().unwrap(), Some(""))
            .json(&json!({"userId": "ada", "event": "Signed Up"}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
}

#[tokio::test]
async fn sigterm_lets_the_server_finish_and_exit_cleanly() {
    let db = format!("kizuna_test_{}", uuid::Uuid::new_v4().simple());
    let mut server = Server::start(&[(
        "DATABASE_URL",
        format!("postgres://postgres@{}/{db}", pg_addr()),
    )]);
    server.wait_ready().await;
    server.send_one_event().await;
    server.terminate();
    let client = pg_client(&db).await.unwrap();
    let stored: i64 = client
        .query_one("SELECT count(*) FROM events", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored, 1);
    drop(client);
    crate::helpers::drop_database(&db).await;
}

#[tokio::test]
async fn with_no_database_anywhere_kizuna_starts_and_stops_its_own() {
    if !std::path::Path::new("/usr/lib/postgresql").exists() {
        eprintln!(
            "no PostgreSQL binaries under /usr/lib/postgresql; the embedded path cannot run here"
        );
        return;
    }
    let dir =
        std::env::temp_dir().join(format!("kizuna-embedded-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let data = dir.join("postgres");
    let mut server = Server::start(&[
        (
            "KIZUNA__DATABASE__PROBE_ADDR",
            format!("127.0.0.1:{}", free_port()),
        ),
        ("KIZUNA__DATABASE__EMBEDDED_DIR", data.display().to_string()),
    ]);
    server.wait_ready().await;
    server.send_one_event().await;
    server.terminate();
    assert!(
        data.join("PG_VERSION").exists(),
        "the cluster lives in the configured folder"
    );
    assert!(
        !data.join("postmaster.pid").exists(),
        "the cluster was stopped on shutdown"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

impl Server {
    /// `kill -9`: no signal handler runs, nothing is flushed or finished.
    fn kill9(mut self) {
        // SAFETY: kill with a pid we spawned and a valid signal number.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGKILL) };
        let _ = self.child.wait();
    }

    async fn create_source(&self) -> String {
        let source: Value = reqwest::Client::new()
            .post(format!("{}/v1/sources", self.base))
            .bearer_auth("t")
            .json(&json!({"name": "Web", "kind": "web"}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        source["write_key"].as_str().unwrap().to_string()
    }
}

/// Messages of one batch: per person an anonymous page view, then the identify that names
/// them. Message ids are `<batch>-m<k><p|i>`, so the batch of any stored message is known.
fn people_batch(batch: &str) -> Value {
    let mut messages = Vec::new();
    for k in 0..5 {
        messages.push(
            json!({"type": "page", "name": "Home", "messageId": format!("{batch}-m{k}p"),
                             "anonymousId": format!("{batch}-a{k}")}),
        );
        messages.push(json!({"type": "identify", "messageId": format!("{batch}-m{k}i"),
                             "userId": format!("{batch}-u{k}"), "anonymousId": format!("{batch}-a{k}"),
                             "traits": {"email": format!("{batch}-{k}@example.com")}}));
    }
    json!({"batch": messages})
}

#[tokio::test]
async fn kill_9_under_ingest_load_loses_nothing_acknowledged_and_resolution_resumes_once() {
    let db = format!("kizuna_test_{}", uuid::Uuid::new_v4().simple());
    let url = format!("postgres://postgres@{}/{db}", pg_addr());
    let envs = [
        ("DATABASE_URL", url.clone()),
        // Small resolver transactions, so the kill is likely to land inside one.
        ("KIZUNA__IDENTITY__BATCH_SIZE", "20".to_string()),
    ];
    let mut server = Server::start(&envs);
    server.wait_ready().await;
    let key = server.create_source().await;

    // Arrange: eight clients sending batches as fast as they are acknowledged.
    let mut clients = Vec::new();
    for c in 0..8 {
        let (base, key) = (server.base.clone(), key.clone());
        clients.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut acknowledged = Vec::new();
            for b in 0.. {
                let batch = format!("c{c}b{b}");
                let sent = client
                    .post(format!("{base}/v1/batch"))
                    .basic_auth(&key, Some(""))
                    .json(&people_batch(&batch))
                    .timeout(Duration::from_secs(10))
                    .send()
                    .await;
                match sent {
                    Ok(r) if r.status() == 200 => acknowledged.push(batch),
                    Ok(r) => panic!("batch {batch} answered {}", r.status()),
                    Err(_) => break, // the server is gone
                }
            }
            acknowledged
        }));
    }

    // Act: kill the server mid-load, then start it again on the same database.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    server.kill9();
    let mut acknowledged = Vec::new();
    for client in clients {
        acknowledged.extend(client.await.unwrap());
    }
    assert!(acknowledged.len() >= 8, "the load ran before the kill");
    let pg = pg_client(&db).await.unwrap();
    let pending_at_kill: i64 = pg
        .query_one(
            "SELECT count(*) FROM event_profiles WHERE resolved_seq IS NULL",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    eprintln!(
        "{} batches acknowledged; {pending_at_kill} events awaited resolution at the kill",
        acknowledged.len()
    );
    let mut server = Server::start(&envs);
    server.wait_ready().await;
    let started = Instant::now();
    loop {
        let pending: i64 = pg
            .query_one(
                "SELECT count(*) FROM event_profiles WHERE resolved_seq IS NULL",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if pending == 0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "resolution did not resume: {pending} events still pending"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Assert: every acknowledged message is stored exactly once…
    let count = |sql: &'static str| {
        let pg = &pg;
        async move { pg.query_one(sql, &[]).await.unwrap().get::<_, i64>(0) }
    };
    for batch in &acknowledged {
        let stored: i64 = pg
            .query_one(
                "SELECT count(*) FROM events WHERE message_id LIKE $1 || '-m%'",
                &[batch],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(stored, 10, "acknowledged batch {batch} is stored whole");
    }
    // …no batch is stored in part…
    let half_batches = count(
        "SELECT count(*) FROM (SELECT split_part(message_id, '-m', 1) FROM events
         GROUP BY 1 HAVING count(*) <> 10) partial",
    )
    .await;
    assert_eq!(half_batches, 0, "a batch is all-or-nothing");
    // …and each stored person is one profile holding both ids and exactly their two events.
    let people = count("SELECT count(*) FROM events WHERE type = 'identify'").await;
    let profiles = count("SELECT count(*) FROM profiles WHERE merged_into IS NULL").await;
    assert_eq!(profiles, people, "one profile a person, no duplicates");
    let miscounted = count(
        "SELECT count(*) FROM events e
         JOIN identities u ON u.kind = 'user_id' AND u.value = e.user_id
         JOIN identities a ON a.kind = 'anonymous_id' AND a.value = e.anonymous_id
         JOIN profiles p ON p.id = u.profile_id
         WHERE e.type = 'identify' AND (a.profile_id <> u.profile_id OR p.event_count <> 2)",
    )
    .await;
    assert_eq!(miscounted, 0, "each event was resolved exactly once");
    let unattributed = count("SELECT count(*) FROM event_profiles WHERE profile_id IS NULL").await;
    assert_eq!(unattributed, 0);

    // What a user sees: an acknowledged person's profile, whole.
    let first = &acknowledged[0];
    let profile: Value = reqwest::Client::new()
        .get(format!(
            "{}/v1/profiles/lookup?user_id={first}-u0",
            server.base
        ))
        .bearer_auth("t")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(profile["event_count"], 2);
    assert_eq!(profile["traits"]["email"], format!("{first}-0@example.com"));

    server.wait_ready().await;
    server.terminate();
    drop(pg);
    crate::helpers::drop_database(&db).await;
}
