//! CORS from the `allowed_origins` list: an allowed origin's preflight is
//! answered with 204 and its requests carry `Access-Control-Allow-Origin`;
//! any other origin, and every origin when the list is empty, gets no CORS
//! header.

mod common;

use common::{config, unique_db, Node};

const APP: &str = "https://app.example";

fn cors_headers(r: &reqwest::Response) -> Vec<String> {
    r.headers().keys().map(|k| k.as_str().to_string()).filter(|k| k.starts_with("access-control-")).collect()
}

async fn preflight(node: &Node, origin: &str) -> reqwest::Response {
    reqwest::Client::new()
        .request(reqwest::Method::OPTIONS, node.url("/messages"))
        .header("Origin", origin)
        .header("Access-Control-Request-Method", "POST")
        .header("Access-Control-Request-Headers", "authorization, content-type")
        .send()
        .await
        .unwrap()
}

async fn get_rooms(node: &Node, origin: &str, token: &str) -> reqwest::Response {
    reqwest::Client::new().get(node.url("/rooms")).header("Origin", origin).bearer_auth(token).send().await.unwrap()
}

#[tokio::test]
async fn an_allowed_origin_gets_cors_and_any_other_none() {
    let mut c = config(&unique_db());
    c.allowed_origins = confab::config::Origins(vec![APP.into(), "http://localhost:3000".into()]);
    let node = Node::start(c).await;
    let alice = node.register("alice").await;

    let r = preflight(&node, APP).await;
    assert_eq!(r.status(), 204);
    let h = r.headers();
    assert_eq!(h["access-control-allow-origin"], APP);
    assert!(h["access-control-allow-methods"].to_str().unwrap().contains("POST"));
    assert!(h["access-control-allow-methods"].to_str().unwrap().contains("DELETE"));
    let allowed = h["access-control-allow-headers"].to_str().unwrap().to_ascii_lowercase();
    assert!(allowed.contains("authorization") && allowed.contains("content-type"), "{allowed}");
    assert_eq!(h["access-control-max-age"], "600");
    assert!(h.get("access-control-allow-credentials").is_none(), "bearer tokens, not cookies");

    // The request itself: answered as usual, readable by the page.
    let r = get_rooms(&node, "https://APP.example/", &alice.token).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["access-control-allow-origin"], "https://APP.example/", "the origin as the browser sent it");
    assert!(r.headers()["vary"].to_str().unwrap().to_ascii_lowercase().contains("origin"));
    // Errors too, so the page can read them.
    let r = get_rooms(&node, APP, "not-a-token").await;
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["access-control-allow-origin"], APP);

    // A foreign origin: no CORS header on the preflight or the request.
    for foreign in ["https://evil.example", "https://app.example.evil", "null"] {
        let r = preflight(&node, foreign).await;
        assert_ne!(r.status(), 204, "{foreign}");
        assert_eq!(cors_headers(&r), Vec::<String>::new(), "{foreign}");
        let r = get_rooms(&node, foreign, &alice.token).await;
        assert_eq!(r.status(), 200);
        assert_eq!(cors_headers(&r), Vec::<String>::new(), "{foreign}");
    }
    node.shutdown().await;
}

#[tokio::test]
async fn with_no_origins_listed_cors_is_off() {
    let node = Node::start(config(&unique_db())).await;
    let alice = node.register("alice").await;
    let r = preflight(&node, APP).await;
    assert_eq!(cors_headers(&r), Vec::<String>::new());
    let r = get_rooms(&node, APP, &alice.token).await;
    assert_eq!(r.status(), 200);
    assert_eq!(cors_headers(&r), Vec::<String>::new());
    node.shutdown().await;
}
