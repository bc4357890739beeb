//! The scope matrix: every operation of the served OpenAPI document, called without a token, with
//! a key of every other scope, and with a key of its own scope.

use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::{spawn_app, TestApp};

const SCOPES: [&str; 6] = [
    "admin",
    "profiles:read",
    "segments:read",
    "segments:write",
    "exports:read",
    "privacy:write",
];

/// Operations anyone may call: probes, metrics and the document itself.
const PUBLIC: [&str; 4] = ["/healthz", "/readyz", "/metrics", "/openapi.json"];

async fn token_with_scope(app: &TestApp, scope: &str) -> String {
    let response = app
        .admin(Method::POST, "/v1/api-keys")
        .json(&json!({"name": format!("only {scope}"), "scopes": [scope]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let body: Value = response.json().await.unwrap();
    body["token"].as_str().unwrap().to_string()
}

/// A concrete URL for a templated path: path parameters become ids nobody has.
fn concrete(path: &str) -> String {
    path.split('/')
        .map(|part| {
            if part.starts_with('{') {
                uuid::Uuid::now_v7().to_string()
            } else {
                part.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

struct Call {
    method: Method,
    path: String,
    has_body: bool,
}

impl Call {
    /// The request, with a body that is not even JSON when the operation takes one: the scope
    /// must be checked before the body is read.
    fn request(&self, app: &TestApp) -> reqwest::RequestBuilder {
        let request = app
            .client
            .request(self.method.clone(), app.url(&concrete(&self.path)));
        if self.has_body {
            request
                .header("content-type", "application/json")
                .body("{not json")
        } else {
            request
        }
    }

    fn name(&self) -> String {
        format!("{} {}", self.method, self.path)
    }
}

#[tokio::test]
async fn every_operation_checks_its_scope() {
    let app = spawn_app().await;
    let (_, write_key) = app.create_source("Web", "web").await;
    let mut tokens = Vec::new();
    for scope in SCOPES {
        tokens.push((scope, token_with_scope(&app, scope).await));
    }
    let document = app.get_json("/openapi.json").await;

    let mut checked = 0;
    for (path, item) in document["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            let Ok(method) = method.to_uppercase().parse::<Method>() else {
                continue;
            };
            let call = Call {
                method,
                path: path.clone(),
                has_body: operation.get("requestBody").is_some(),
            };
            let security = operation["security"].as_array();
            let schemes: Vec<(&String, &Value)> = security
                .into_iter()
                .flatten()
                .flat_map(|s| s.as_object().unwrap().iter())
                .collect();
            if schemes.is_empty() {
                assert!(
                    PUBLIC.contains(&path.as_str()),
                    "{} declares no security scheme: every non-public operation must",
                    call.name()
                );
                let response = call.request(&app).send().await.unwrap();
                assert!(response.status().is_success(), "{}", call.name());
                checked += 1;
                continue;
            }
            assert_eq!(schemes.len(), 1, "{}: one scheme", call.name());
            let (scheme, scopes) = schemes[0];

            let anonymous = call.request(&app).send().await.unwrap();
            assert_eq!(
                anonymous.status(),
                401,
                "{} without credentials",
                call.name()
            );
            assert_eq!(
                anonymous.headers()["content-type"],
                "application/problem+json"
            );

            if scheme == "write_key" {
                // The tracking API knows write keys only: no bearer token opens it.
                for (scope, token) in &tokens {
                    let response = call.request(&app).bearer_auth(token).send().await.unwrap();
                    assert_eq!(
                        response.status(),
                        401,
                        "{} with a {scope} token",
                        call.name()
                    );
                }
                let message = json!({"type": "track", "userId": "u1", "event": "Checked", "previousId": "p1", "groupId": "g1",
                                     "batch": [{"type": "track", "userId": "u1", "event": "Checked"}]});
                let response = app
                    .client
                    .request(call.method.clone(), app.url(&call.path))
                    .basic_auth(&write_key, Some(""))
                    .json(&message)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), 200, "{} with a write key", call.name());
                checked += 1;
                continue;
            }

            assert_eq!(scheme, "bearer", "{}", call.name());
            let scopes: Vec<&str> = scopes
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s.as_str().unwrap())
                .collect();
            assert_eq!(
                scopes.len(),
                1,
                "{} must name exactly the one scope it requires, not {scopes:?}",
                call.name()
            );
            let required = scopes[0];
            assert!(SCOPES.contains(&required), "{}: {required}", call.name());

            let bad_token = call
                .request(&app)
                .bearer_auth("kz_nobody")
                .send()
                .await
                .unwrap();
            assert_eq!(
                bad_token.status(),
                401,
                "{} with an unknown token",
                call.name()
            );

            for (scope, token) in &tokens {
                let status = call
                    .request(&app)
                    .bearer_auth(token)
                    .send()
                    .await
                    .unwrap()
                    .status()
                    .as_u16();
                if *scope == required || *scope == "admin" {
                    assert!(
                        status != 401 && status != 403,
                        "{} with its scope {scope} answered {status}",
                        call.name()
                    );
                } else {
                    assert_eq!(status, 403, "{} with only {scope}", call.name());
                }
            }
            checked += 1;
        }
    }
    assert!(checked >= 39, "only {checked} operations in the document");
}

#[tokio::test]
async fn tokens_and_write_keys_are_stored_only_as_their_sha256() {
    let app = spawn_app().await;
    let token = token_with_scope(&app, "profiles:read").await;
    let (_, write_key) = app.create_source("Shop", "pos").await;
    let db = app.db().await;

    let row = db
        .query_one(
            "SELECT token_hash = sha256(convert_to($1, 'UTF8')), api_keys::text FROM api_keys",
            &[&token],
        )
        .await
        .unwrap();
    assert!(row.get::<_, bool>(0), "the token's SHA-256 is stored");
    assert!(!row.get::<_, String>(1).contains(&token[3..]));

    let row = db
        .query_one(
            "SELECT write_key_hash = sha256(convert_to($1, 'UTF8')), sources::text FROM sources",
            &[&write_key],
        )
        .await
        .unwrap();
    assert!(row.get::<_, bool>(0), "the write key's SHA-256 is stored");
    assert!(!row.get::<_, String>(1).contains(&write_key[3..]));
}
