//! The server with GitHub App credentials against FakeGitHub (TLS, JWT-verifying): App-served
//! audit records and response headers, the one retry after a `401`, token metrics, `/explain`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod server_common;
mod support;

use http::StatusCode;
use server_common::*;
use support::{APP1_KEY, APP1_PUB, FakeGitHub, TestApp, TestConfig};

async fn fake() -> FakeGitHub {
    FakeGitHub::builder()
        .app(1001, APP1_PUB)
        .installation(1001, 77, "acme")
        .pat("ghp_fakepat")
        .start()
        .await
}

#[tokio::test]
async fn app_served_request_says_which_installation_in_headers_and_audit() {
    let github = fake().await;
    let config = TestConfig::new(&github)
        .token("ghp_fakepat")
        .app(TestApp::new(1001, APP1_KEY));
    let proxy = TestProxy::start(&config.yaml()).await;
    let response = proxy.get("/repos/acme/widgets").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["x-credential-type"], "app");
    assert_eq!(response.headers()["x-credential-reason"], "installed");
    let body: serde_json::Value = serde_json::from_slice(response.body()).unwrap();
    assert_eq!(body["auth"], "app:77");

    let other = proxy.get("/repos/someone-else/x").await;
    assert_eq!(other.headers()["x-credential-type"], "pat");
    assert_eq!(other.headers()["x-credential-reason"], "not_installed");

    let metrics = proxy.admin_get("/metrics").await;
    let text = String::from_utf8(metrics.body().to_vec()).unwrap();
    assert!(
        text.contains("gh_token_proxy_token_mints_total{app_id=\"1001\",result=\"ok\"} 1"),
        "{text}"
    );
    assert!(text.contains("gh_token_proxy_token_cache_lookups_total{result=\"miss\"}"));

    let explain = proxy
        .admin_get("/explain?url=https%3A%2F%2Fapi.github.com%2Frepos%2Facme%2Fwidgets&method=GET")
        .await;
    assert_eq!(explain.status(), StatusCode::OK);
    let e: serde_json::Value = serde_json::from_slice(explain.body()).unwrap();
    assert_eq!(e["credential"], "app", "{e}");
    assert_eq!(e["reason"], "installed");
    assert_eq!(e["installation_id"], 77);

    let issued = github.issued_tokens();
    let records = proxy.stop().await;
    let r = &records[0];
    assert_eq!(r["credential"], "app");
    assert_eq!(r["reason"], "installed");
    assert_eq!(r["app_id"], 1001);
    assert_eq!(r["installation_id"], 77);
    assert_eq!(
        r["hashed_token"],
        gh_token_proxy::credential::hash_token(&issued[0])
    );
    let text = serde_json::to_string(&records).unwrap();
    for token in issued
        .iter()
        .chain(std::iter::once(&"ghp_fakepat".to_string()))
    {
        assert!(!text.contains(token.as_str()));
    }
    assert_eq!(records[1]["credential"], "pat");
    assert_eq!(records[1]["reason"], "not_installed");
}

#[tokio::test]
async fn rejected_app_token_is_evicted_and_the_request_retried_once() {
    let github = fake().await;
    let config = TestConfig::new(&github)
        .app(TestApp::new(1001, APP1_KEY))
        .default_owner("acme");
    let proxy = TestProxy::start(&config.yaml()).await;
    assert_eq!(proxy.get("/rate_limit").await.status(), StatusCode::OK);
    let first = github.issued_tokens()[0].clone();
    github.revoke_token(&first);

    let response = proxy.get("/rate_limit").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(github.mint_count(), 2);
    // The revoked token is forgotten by the fake: the one it knows is the fresh one.
    let live = github.issued_tokens();
    assert_eq!(live.len(), 1);
    let second = live[0].clone();
    assert_ne!(first, second);
    let records = proxy.stop().await;
    assert_eq!(records.len(), 2);
    assert_eq!(
        records[1]["hashed_token"],
        gh_token_proxy::credential::hash_token(&second)
    );
    assert_eq!(records[1]["upstream_status"], 200);
}
