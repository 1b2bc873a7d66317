//! The OpenAPI document (docs/openapi.json, `GET /openapi.json`) against
//! the code: the committed file is what the code generates, every route is
//! in it with the methods the router serves, and each operation asks for
//! the credentials its handler checks.
//!
//! After changing a handler's annotation or a type's schema, regenerate the
//! file with `CONFAB_WRITE_OPENAPI=1 cargo test --test openapi`.

mod common;

use std::collections::BTreeSet;
use std::path::Path;

use serde_json::Value;

const FILE: &str = "docs/openapi.json";
const METHODS: &[&str] = &["get", "put", "post", "delete", "options", "head", "patch", "trace"];

fn generated() -> Value {
    serde_json::from_str(&confab::http::openapi::json()).unwrap()
}

/// (path, method) of every operation in the document.
fn operations(doc: &Value) -> Vec<(String, String, &Value)> {
    let mut found = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            if METHODS.contains(&method.as_str()) {
                found.push((path.clone(), method.clone(), operation));
            }
        }
    }
    found
}

#[test]
fn the_committed_document_is_what_the_code_generates() {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join(FILE);
    let text = confab::http::openapi::json();
    if std::env::var_os("CONFAB_WRITE_OPENAPI").is_some_and(|v| v == "1") {
        std::fs::write(&file, &text).unwrap();
        return;
    }
    let committed = std::fs::read_to_string(&file).unwrap_or_default();
    assert!(
        committed == text,
        "{FILE} differs from the document the code generates (a handler's #[utoipa::path] or a type's \
         ToSchema changed?). Regenerate it with:\n\n    CONFAB_WRITE_OPENAPI=1 cargo test --test openapi\n\n\
         and commit the result."
    );
}

#[test]
fn it_is_openapi_3_1_with_both_security_schemes() {
    let doc = generated();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1."), "{}", doc["openapi"]);
    let schemes = &doc["components"]["securitySchemes"];
    assert_eq!(schemes["bearer"]["type"], "http");
    assert_eq!(schemes["bearer"]["scheme"], "bearer");
    assert_eq!(schemes["apikey"]["type"], "apiKey");
    assert_eq!(schemes["apikey"]["in"], "header");
    assert_eq!(schemes["apikey"]["name"], "Authorization");
}

#[test]
fn every_route_is_documented_and_nothing_else() {
    let doc = generated();
    let documented: BTreeSet<String> = doc["paths"].as_object().unwrap().keys().cloned().collect();
    // `/ws/echo` is the conformance endpoint, off in production; a WebSocket
    // upgrade is all it does.
    let routed: BTreeSet<String> =
        confab::http::route_paths().into_iter().filter(|p| *p != "/ws/echo").map(str::to_owned).collect();
    let missing: Vec<_> = routed.difference(&documented).collect();
    let extra: Vec<_> = documented.difference(&routed).collect();
    assert!(missing.is_empty(), "routes missing from the document: {missing:?}");
    assert!(extra.is_empty(), "documented paths that are no route: {extra:?}");
}

#[test]
fn each_operation_names_its_credentials_and_an_answer_for_each_outcome() {
    let doc = generated();
    let open = ["/register", "/login", "/token/refresh", "/healthz", "/readyz", "/metrics", "/openapi.json"];
    let mut ids = BTreeSet::new();
    for (path, method, op) in operations(&doc) {
        let id = op["operationId"].as_str().unwrap_or_else(|| panic!("{method} {path}: no operationId"));
        assert!(ids.insert(id.to_owned()), "{method} {path}: operationId {id} used twice");
        let schemes: BTreeSet<&str> = op["security"]
            .as_array()
            .map(|reqs| reqs.iter().flat_map(|r| r.as_object().unwrap().keys().map(String::as_str)).collect())
            .unwrap_or_default();
        let expected: BTreeSet<&str> = if open.contains(&path.as_str()) {
            BTreeSet::new()
        } else if path.starts_with("/api/") {
            ["apikey"].into()
        } else {
            ["bearer"].into()
        };
        assert_eq!(schemes, expected, "{method} {path}: security");
        let statuses: BTreeSet<&str> = op["responses"].as_object().unwrap().keys().map(String::as_str).collect();
        assert!(statuses.iter().any(|s| s.starts_with('1') || s.starts_with('2')), "{method} {path}: no success");
        if !schemes.is_empty() {
            for status in ["401", "429", "500", "503"] {
                assert!(statuses.contains(status), "{method} {path}: no {status} response");
            }
        }
        if op.get("requestBody").is_some() {
            for status in ["400", "413"] {
                assert!(statuses.contains(status), "{method} {path}: takes a body, but no {status} response");
            }
        }
        if path.contains('{') {
            assert!(statuses.contains("400"), "{method} {path}: takes an id, but no 400 response");
        }
    }
}

/// The node serves the document, and routes every documented operation
/// (no 405 or unknown-path 404 for any of them).
#[tokio::test]
async fn a_node_serves_the_document_and_each_operation() {
    let node = common::Node::start(common::config(&common::unique_db())).await;
    let resp = node.http.get(node.url("/openapi.json")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/json");
    assert_eq!(resp.text().await.unwrap(), confab::http::openapi::json());

    let doc = generated();
    for (path, method, _) in operations(&doc) {
        let concrete: String = path
            .split('/')
            .map(|part| if part.starts_with('{') { "000000000000000000000000" } else { part })
            .collect::<Vec<_>>()
            .join("/");
        let method = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
        let resp = node.http.request(method.clone(), node.url(&concrete)).send().await.unwrap();
        let status = resp.status().as_u16();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        assert_ne!(status, 405, "{method} {path}: not routed for this method");
        assert!(!(status == 404 && body["error"]["message"] == "no such endpoint"), "{method} {path}: no such route");
    }
    node.shutdown().await;
}
