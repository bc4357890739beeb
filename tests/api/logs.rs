//! Logs never carry secrets or personal data: the real binary at `debug`, in text and JSON,
//! exercised with write keys, tokens, emails and phones, and its output searched for them.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::helpers::pg_addr;

const ADMIN_TOKEN: &str = "adm_Zq81LxW0rTnY5vKc";
const EMAIL: &str = "Grace.Hopper@Navy.example";
const PHONE: &str = "+1 (202) 555-0147";
const BAD_TOKEN: &str = "kz_NotARealTokenButSecret123";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Runs the binary at `debug` in `format`, exercises it, stops it, and returns its output
/// together with every secret and personal value it was given.
async fn run_and_capture(format: &str) -> (String, Vec<String>) {
    let db = format!("kizuna_test_{}", uuid::Uuid::new_v4().simple());
    let dir = std::env::temp_dir().join(format!("kizuna-logs-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let (out_path, err_path) = (dir.join("stdout"), dir.join("stderr"));
    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_kizuna"))
        .arg("serve")
        .env("KIZUNA__SERVER__BIND", format!("127.0.0.1:{port}"))
        .env("KIZUNA__AUTH__ADMIN_TOKEN", ADMIN_TOKEN)
        .env("KIZUNA__LOG__LEVEL", "debug")
        .env("KIZUNA__LOG__FORMAT", format)
        .env("KIZUNA__QUERY__SCHEDULE_EVERY_SECS", "1")
        .env_remove("RUST_LOG")
        .env(
            "DATABASE_URL",
            format!("postgres://postgres@{}/{db}", pg_addr()),
        )
        .stdout(Stdio::from(std::fs::File::create(&out_path).unwrap()))
        .stderr(Stdio::from(std::fs::File::create(&err_path).unwrap()))
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let started = Instant::now();
    loop {
        if let Ok(r) = client.get(format!("{base}/readyz")).send().await {
            if r.status() == 200 {
                break;
            }
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the server exited early"
        );
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "not ready in 60 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let source: Value = client
        .post(format!("{base}/v1/sources"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"name": "Web", "kind": "web"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let write_key = source["write_key"].as_str().unwrap().to_string();
    let key: Value = client
        .post(format!("{base}/v1/api-keys"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"name": "reader", "scopes": ["profiles:read"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = key["token"].as_str().unwrap().to_string();

    let track = |path: &str, body: Value| {
        client
            .post(format!("{base}{path}"))
            .basic_auth(&write_key, Some(""))
            .json(&body)
            .send()
    };
    let identify = json!({"userId": "grace-1", "traits": {"email": EMAIL, "phone": PHONE}});
    assert_eq!(track("/v1/identify", identify).await.unwrap().status(), 200);
    assert_eq!(
        track("/v1/track", json!({"userId": "grace-1", "event": "Logged In", "context": {"traits": {"email": EMAIL}}}))
            .await
            .unwrap()
            .status(),
        200
    );
    // The key in the body, as segment-python sends it; and a malformed message.
    let in_body = client
        .post(format!("{base}/v1/batch"))
        .json(&json!({"writeKey": write_key, "batch": [{"type": "track", "userId": "grace-1", "event": "Viewed"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(in_body.status(), 200);
    let bad = track("/v1/batch", json!({"batch": [{"type": "track", "userId": "grace-1", "traits": {"email": EMAIL}, "timestamp": "not a time"}]}))
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);

    // Lookups carry the values in their query strings.
    let lookup = |kind: &'static str, value: &'static str| {
        client
            .get(format!("{base}/v1/profiles/lookup"))
            .query(&[(kind, value)])
            .bearer_auth(&token)
            .send()
    };
    let mut found = false;
    for _ in 0..100 {
        let by_email = lookup("email", EMAIL).await.unwrap();
        if by_email.status() == 200 {
            found = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(found, "the profile was resolved");
    let by_phone = lookup("phone", PHONE).await.unwrap();
    assert_eq!(by_phone.status(), 200);
    let missing = lookup("email", "nobody.special@example.org").await.unwrap();
    assert_eq!(missing.status(), 404);
    let missing_phone = lookup("phone", "202.555.0199").await.unwrap();
    assert_eq!(missing_phone.status(), 404);
    let refused = client
        .get(format!("{base}/v1/profiles/lookup?email=x"))
        .bearer_auth(BAD_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    let bad_key = client
        .post(format!("{base}/v1/track"))
        .basic_auth("wk_ThisIsNotAKeyButStillSecret", Some(""))
        .json(&json!({"userId": "x", "event": "y"}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad_key.status(), 401);
    // Let the schedule read the snapshot once, so its debug output is in the logs too.
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // SAFETY: kill with a pid we spawned and a valid signal number.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no exit after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let output =
        std::fs::read_to_string(&out_path).unwrap() + &std::fs::read_to_string(&err_path).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    crate::helpers::drop_database(&db).await;

    let secrets = vec![
        ADMIN_TOKEN.to_string(),
        BAD_TOKEN.to_string(),
        "wk_ThisIsNotAKeyButStillSecret".to_string(),
        write_key.clone(),
        write_key[3..].to_string(),
        token.clone(),
        token[3..].to_string(),
        EMAIL.to_string(),
        EMAIL.to_lowercase(),
        "nobody.special@example.org".to_string(),
        "Grace.Hopper%40".to_string(),
        "grace.hopper%40".to_string(),
        PHONE.to_string(),
        "+12025550147".to_string(),
        "%2B12025550147".to_string(),
        "2025550147".to_string(),
        "555-0147".to_string(),
        "555.0199".to_string(),
        "2025550199".to_string(),
    ];
    (output, secrets)
}

async fn assert_logs_keep_secrets(format: &str) {
    let (output, secrets) = run_and_capture(format).await;
    assert!(
        output.contains("/v1/profiles/lookup") && output.contains("kizuna is listening"),
        "the {format} log has the requests in it:\n{output}"
    );
    let lower = output.to_lowercase();
    for secret in secrets {
        if let Some(at) = lower.find(&secret.to_lowercase()) {
            let line_start = output[..at].rfind('\n').map_or(0, |i| i + 1);
            let line_end = output[at..].find('\n').map_or(output.len(), |i| at + i);
            panic!(
                "the {format} log contains {secret:?}:\n{}",
                &output[line_start..line_end]
            );
        }
    }
}

#[tokio::test]
async fn text_logs_at_debug_never_contain_keys_tokens_emails_or_phones() {
    assert_logs_keep_secrets("text").await;
}

#[tokio::test]
async fn json_logs_at_debug_never_contain_keys_tokens_emails_or_phones() {
    assert_logs_keep_secrets("json").await;
}
