//! `spawn_app`: a Kizuna server on a free port with a fresh database of its own (dropped after
//! the test), plus a fault-injecting TCP proxy in front of PostgreSQL for outage tests.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kizuna::config::Settings;
use kizuna::startup::Application;
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};

pub const ADMIN_TOKEN: &str = "test-admin-token";

/// The PostgreSQL server tests use: TEST_PG_ADDR or 127.0.0.1:5432 (user postgres, trust).
pub fn pg_addr() -> String {
    std::env::var("TEST_PG_ADDR").unwrap_or_else(|_| "127.0.0.1:5432".into())
}

pub struct TestApp {
    pub address: String,
    pub client: reqwest::Client,
    pub db_name: String,
    handle: actix_web::dev::ServerHandle,
    pub proxy: Option<FaultyProxy>,
}

pub struct Options {
    /// Route the app's database connections through a proxy the test can cut.
    pub via_proxy: bool,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(Options { via_proxy: false }, |_| {}).await
}

pub async fn spawn_app_with(options: Options, tweak: impl FnOnce(&mut Settings)) -> TestApp {
    std::env::set_var("KIZUNA_ENV", "test");
    let mut settings = Settings::load().expect("configuration loads");
    kizuna::telemetry::init(&settings.log);
    let db_name = format!("kizuna_test_{}", uuid::Uuid::new_v4().simple());
    let proxy = if options.via_proxy {
        Some(FaultyProxy::start(pg_addr()).await)
    } else {
        None
    };
    let db_addr = proxy
        .as_ref()
        .map(|p| p.addr.clone())
        .unwrap_or_else(pg_addr);
    settings.database.url = format!("postgres://postgres@{db_addr}/{db_name}");
    settings.database.pool_size = 8;
    settings.server.bind = "127.0.0.1:0".into();
    settings.server.workers = 1;
    settings.server.shutdown_timeout_secs = 1;
    settings.auth.admin_token = ADMIN_TOKEN.into();
    tweak(&mut settings);
    let app = Application::build(settings)
        .await
        .expect("the application starts");
    let address = format!("http://{}", app.address());
    let handle = app.handle();
    tokio::spawn(app.run_until_stopped());
    TestApp {
        address,
        client: reqwest::Client::new(),
        db_name,
        handle,
        proxy,
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        // The server runs on the test's runtime, which is blocked here: ask it to stop without
        // waiting (the command is sent at once), then drop the database, closing its sessions.
        drop(self.handle.stop(false));
        let db_name = self.db_name.clone();
        // Drop runs outside async context; use a runtime of our own on a plain thread.
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(drop_database(&db_name));
        })
        .join()
        .ok();
    }
}

pub async fn pg_client(db: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, conn) = tokio_postgres::connect(
        &format!("postgres://postgres@{}/{db}", pg_addr()),
        tokio_postgres::NoTls,
    )
    .await?;
    tokio::spawn(conn);
    Ok(client)
}

/// Drops a test database, closing whatever sessions it still has.
pub async fn drop_database(name: &str) {
    if let Ok(client) = pg_client("postgres").await {
        let _ = client
            .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
            .await;
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.address, path)
    }

    /// A direct connection to this test's database, to check what was stored.
    pub async fn db(&self) -> tokio_postgres::Client {
        pg_client(&self.db_name)
            .await
            .expect("test database reachable")
    }

    pub async fn count_events(&self) -> i64 {
        self.db()
            .await
            .query_one("SELECT count(*) FROM events", &[])
            .await
            .unwrap()
            .get(0)
    }

    pub fn admin(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.client
            .request(method, self.url(path))
            .bearer_auth(ADMIN_TOKEN)
    }

    /// Creates a source and returns (id, write key).
    pub async fn create_source(&self, name: &str, kind: &str) -> (String, String) {
        let response = self
            .admin(reqwest::Method::POST, "/v1/sources")
            .json(&json!({"name": name, "kind": kind}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201);
        let body: Value = response.json().await.unwrap();
        (
            body["id"].as_str().unwrap().into(),
            body["write_key"].as_str().unwrap().into(),
        )
    }

    /// POSTs `body` to a tracking path with the write key as Basic username.
    pub async fn post_tracking(
        &self,
        path: &str,
        write_key: &str,
        body: &Value,
    ) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .basic_auth(write_key, Some(""))
            .json(body)
            .send()
            .await
            .unwrap()
    }
}

/// Reads a problem+json response, checking its shape, and returns it.
pub async fn problem(response: reqwest::Response, status: u16) -> Value {
    assert_eq!(response.status(), status);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(content_type, "application/problem+json");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], status);
    assert!(body["detail"].as_str().is_some_and(|d| !d.is_empty()));
    body
}

/// A TCP proxy to PostgreSQL whose link the test can cut (connections reset, new ones refused)
/// or black-hole (connections accepted, nothing ever answered), then restore.
pub struct FaultyProxy {
    pub addr: String,
    mode: Arc<AtomicU8>,
    tasks: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

const PASS: u8 = 0;
const CUT: u8 = 1;
const BLACKHOLE: u8 = 2;

impl FaultyProxy {
    async fn start(upstream: String) -> FaultyProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let mode = Arc::new(AtomicU8::new(PASS));
        let tasks: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>> = Arc::default();
        let (m, t) = (mode.clone(), tasks.clone());
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                match m.load(Ordering::SeqCst) {
                    CUT => drop(inbound),
                    BLACKHOLE => t.lock().unwrap().push(tokio::spawn(async move {
                        let _keep = inbound;
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                    })),
                    _ => {
                        let upstream = upstream.clone();
                        t.lock().unwrap().push(tokio::spawn(async move {
                            if let Ok(mut outbound) = TcpStream::connect(upstream).await {
                                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound)
                                    .await;
                            }
                        }));
                    }
                }
            }
        });
        FaultyProxy { addr, mode, tasks }
    }

    fn kill_open_connections(&self) {
        for task in self.tasks.lock().unwrap().drain(..) {
            task.abort();
        }
    }

    /// The database goes away: open connections reset, new ones refused.
    pub fn cut(&self) {
        self.mode.store(CUT, Ordering::SeqCst);
        self.kill_open_connections();
    }

    /// The database hangs: open connections are frozen, new ones never answered.
    pub fn blackhole(&self) {
        self.mode.store(BLACKHOLE, Ordering::SeqCst);
        self.kill_open_connections();
    }

    pub fn restore(&self) {
        self.mode.store(PASS, Ordering::SeqCst);
    }
}

impl TestApp {
    /// Waits until identity resolution has caught up with everything acknowledged.
    pub async fn settle(&self) {
        let db = self.db().await;
        for _ in 0..200 {
            let pending: i64 = db
                .query_one(
                    "SELECT count(*) FROM event_profiles WHERE resolved_seq IS NULL",
                    &[],
                )
                .await
                .unwrap()
                .get(0);
            if pending == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("identity resolution did not catch up within 5 s");
    }

    /// The value of an unlabelled metric (or a histogram's `_count` / `_sum`) on `GET /metrics`.
    pub async fn metric(&self, name: &str) -> f64 {
        let text = self
            .client
            .get(self.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find_map(|line| line.strip_prefix(&format!("{name} ")))
            .unwrap_or_else(|| panic!("{name} is exported"))
            .parse()
            .unwrap()
    }

    /// GET with the admin token, expecting 200, returning the JSON body.
    pub async fn get_json(&self, path: &str) -> Value {
        let response = self.admin(reqwest::Method::GET, path).send().await.unwrap();
        assert_eq!(response.status(), 200, "GET {path}");
        response.json().await.unwrap()
    }

    /// The profile holding an identifier, e.g. `lookup("email", "ada@example.com")`.
    pub async fn lookup(&self, kind: &str, value: &str) -> Value {
        let path = format!("/v1/profiles/lookup?{kind}={}", urlencoding::encode(value));
        self.get_json(&path).await
    }
}

/// The string at JSON pointer `field` (e.g. `/source/kind`) of each item of `list`, in order.
pub fn listed<'a>(list: &'a Value, field: &str) -> Vec<&'a str> {
    list.as_array()
        .expect("a JSON array")
        .iter()
        .map(|item| item.pointer(field).and_then(Value::as_str).expect(field))
        .collect()
}

/// The `(kind, value)` pairs of a profile's identities, sorted.
pub fn identities(profile: &Value) -> Vec<(String, String)> {
    let mut ids: Vec<(String, String)> = profile["identities"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["kind"].as_str().unwrap().to_string(),
                i["value"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    ids.sort();
    ids
}
