//! End to end (SPEC §7.2): what a `401` from GitHub does to each kind of request. Only a
//! body-less App request is retried; a request with a body gets the `401` (the token is still
//! evicted); a PAT's `401` is passed through untouched.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "support/e2e.rs"]
mod e2e;
mod server_common;
mod support;

use bytes::Bytes;
use e2e::{INST1, PAT, World, request};
use http::Method;
use serde_json::json;
use support::fake_github::{Auth, Scripted};
use support::secrets::hashed_token;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_with_a_body_is_not_retried_but_the_token_is_evicted() {
    let w = World::start().await;
    w.fake.set_strict_auth(true);
    w.get("/repos/acme/widgets")
        .await
        .assert_served(200, "app", "installed");
    let old = w.fake.issued_tokens();
    w.fake.revoke_token(&old[0]);

    let reply = request(
        w.proxy.addr,
        Method::POST,
        "/repos/acme/widgets/issues",
        &[("content-type", "application/json")],
        Bytes::from(json!({"title": "t"}).to_string()),
    )
    .await;
    // GitHub's own 401, with the credential that was tried.
    reply.assert_served(401, "app", "installed");
    assert_eq!(reply.json()["message"], "Bad credentials");
    assert_eq!(w.fake.calls("POST /repos/acme/widgets/issues"), 1);
    let r = w.record(&reply).await;
    assert_eq!(r["upstream_status"], 401);
    assert_eq!(r["outcome"], "ok");
    assert_eq!(r["hashed_token"], hashed_token(&old[0]));
    assert_eq!(w.fake.mint_count(), 1, "no retry, so no mint yet");

    // The rejected token serves no one else: the next request mints.
    let reply = w.get("/repos/acme/widgets").await;
    reply.assert_served(200, "app", "installed");
    assert_eq!(reply.json()["auth"], format!("app:{INST1}"));
    assert_eq!(w.fake.mint_count(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pat_401_is_passed_through_without_retry() {
    let w = World::start().await;
    w.fake.set_strict_auth(true);
    w.fake.revoke_pat(PAT);
    let reply = w.get("/repos/other/thing").await;
    reply.assert_served(401, "pat", "not_installed");
    assert_eq!(w.fake.calls("/repos/other/thing"), 1);
    let auths = w.fake.auths_for("/repos/other/thing");
    assert_eq!(auths, [Auth::Invalid]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_modified_is_recorded_as_ok_with_no_body() {
    let w = World::start().await;
    w.fake.script(
        "GET /repos/acme/widgets",
        Scripted::json(json!({}))
            .status(304)
            .body(Bytes::new())
            .header("etag", "\"abc\""),
    );
    let reply = request(
        w.proxy.addr,
        Method::GET,
        "/repos/acme/widgets",
        &[("if-none-match", "\"abc\"")],
        Bytes::new(),
    )
    .await;
    reply.assert_served(304, "app", "installed");
    assert!(reply.body.is_empty());
    let r = w.record(&reply).await;
    assert_eq!(r["status"], 304);
    assert_eq!(r["upstream_status"], 304);
    assert_eq!(r["bytes_out"], 0);
    assert_eq!(r["outcome"], "ok");
}

/// The retry's token is rejected too: it is evicted as well (no second retry), so the next
/// request mints instead of sending a token GitHub already refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_401_on_the_retry_evicts_the_retrys_token_too() {
    let w = World::start().await;
    let first = w.get("/repos/acme/widgets").await;
    first.assert_served(200, "app", "installed");
    let first_hash = w.record(&first).await["hashed_token"].clone();
    assert_eq!(w.fake.mint_count(), 1);
    w.fake.script(
        "GET /repos/acme/widgets",
        Scripted::json(json!({"message": "Bad credentials"})).status(401),
    );
    let reply = w.get("/repos/acme/widgets").await;
    reply.assert_served(401, "app", "installed");
    assert_eq!(w.fake.mint_count(), 2, "one retry, with a fresh token");
    // The retry's token: a fresh one (the fake's list of tokens is unordered).
    let r = w.record(&reply).await;
    assert_ne!(r["hashed_token"], first_hash);
    assert!(
        w.fake
            .issued_tokens()
            .iter()
            .any(|t| r["hashed_token"] == hashed_token(t)),
        "{r}"
    );

    w.fake.script(
        "GET /repos/acme/widgets",
        Scripted::json(json!({"ok": true})),
    );
    w.get("/repos/acme/widgets")
        .await
        .assert_served(200, "app", "installed");
    assert_eq!(
        w.fake.mint_count(),
        3,
        "the retry's rejected token was not reused"
    );
}

/// A client limited to App tokens stays limited when the retry's fresh mint fails and the
/// decision falls back to the PAT: `403 client_policy`, and the PAT never reaches GitHub.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_retry_never_falls_back_to_a_credential_the_client_may_not_use() {
    const KEY: &str = "apponly-key-0123456789";
    let w = World::start_with(
        "  clients:\n    - name: apponly\n      key: apponly-key-0123456789\n      credentials: [app]\n",
    )
    .await;
    let bearer = format!("Bearer {KEY}");
    let auth = [("authorization", bearer.as_str())];
    let get = || {
        request(
            w.proxy.addr,
            Method::GET,
            "/repos/acme/widgets",
            &auth,
            Bytes::new(),
        )
    };
    get().await.assert_served(200, "app", "installed");
    w.fake.set_strict_auth(true);
    w.fake.revoke_token(&w.fake.issued_tokens()[0]);
    w.fake.fail_mints(500, 1);

    // No retry is possible with a credential this client may use: GitHub's 401 is the answer,
    // and the record says what was forwarded (the rejected token) and what GitHub said.
    let reply = get().await;
    reply.assert_served(401, "app", "installed");
    let auths = w.fake.auths_for("/repos/acme/widgets");
    assert!(
        !auths.contains(&Auth::Pat),
        "the PAT reached GitHub: {auths:?}"
    );
    let r = w.record(&reply).await;
    assert_eq!(r["client"], "apponly");
    assert_eq!(r["credential"], "app", "{r}");
    assert_eq!(r["reason"], "installed", "{r}");
    assert_eq!(r["upstream_status"], 401, "{r}");
    assert_eq!(r["outcome"], "ok", "{r}");
    assert!(r["hashed_token"].is_string(), "{r}");
}
