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
