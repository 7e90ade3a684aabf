//! End to end (SPEC §7.3): the audit records of an App-served, a PAT-served, a refused and a
//! client-aborted request have every field right; response headers and `explain` agree with
//! them. Also the `401` eviction and retry (§7.2).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "support/e2e.rs"]
mod e2e;
mod server_common;
mod support;

use std::time::SystemTime;

use e2e::{APP1, INST1, PAT, Reply, World, assert_ts, record_of};
use http::Method;
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use server_common::{AUDIT_FIELDS, assert_audit_fields};
use support::fake_github::{Auth, Scripted};
use support::secrets::hashed_token;
use tokio::net::TcpStream;

/// Checks every field: the ones the test knows exactly (`expected`), plus `ts`, `request_id`,
/// `client_addr` and `duration_ms` against what the client saw.
fn assert_record(
    r: &Value,
    reply_id: &str,
    local: std::net::SocketAddr,
    window: (SystemTime, SystemTime),
    expected: Value,
) {
    assert_audit_fields(r);
    assert_ts(&r["ts"], window);
    assert_eq!(r["request_id"], reply_id);
    assert_eq!(r["client_addr"], local.to_string());
    let duration = r["duration_ms"].as_f64().unwrap();
    let elapsed = window.1.duration_since(window.0).unwrap().as_secs_f64() * 1000.0;
    assert!(
        duration >= 0.0 && duration <= elapsed + 1.0,
        "{duration} > {elapsed}"
    );
    for (key, value) in expected.as_object().unwrap() {
        assert_eq!(&r[key], value, "field {key} of {r}");
    }
    let known = expected.as_object().unwrap().len() + 4;
    assert_eq!(known, AUDIT_FIELDS.len(), "the test names every field");
}

fn assert_headers_agree(reply: &Reply, r: &Value) {
    assert_eq!(r["request_id"], reply.header("x-request-id"));
    assert_eq!(r["credential"], reply.header("x-credential-type"));
    assert_eq!(r["reason"], reply.header("x-credential-reason"));
    assert_eq!(r["status"], reply.status.as_u16());
}

fn rate_limited(id: &str, remaining: u64, resource: &str, body: Value) -> Scripted {
    Scripted::json(body)
        .header("x-github-request-id", id)
        .header("x-ratelimit-remaining", &remaining.to_string())
        .header("x-ratelimit-resource", resource)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_records_of_app_pat_refused_and_aborted_requests_have_every_field_right() {
    let w = World::start().await;
    let app_body = json!({"full_name": "acme/widgets"});
    let pat_body = json!({"full_name": "other/thing", "private": false});
    w.fake.script(
        "GET /repos/acme/widgets",
        rate_limited("C0DE:APP:0001", 4321, "core", app_body.clone()),
    );
    w.fake.script(
        "GET /repos/other/thing",
        rate_limited("C0DE:PAT:0002", 4999, "core", pat_body.clone()),
    );
    let big = vec![b'x'; 32 * 1024 * 1024];
    w.fake.script(
        "GET /repos/acme/widgets/tarball/main",
        rate_limited("C0DE:BIG:0003", 4320, "core", json!({})).body(big),
    );
    let api = w.api_authority();

    // App-served, with a query string that must not reach the record.
    let start = SystemTime::now();
    let app = w.get("/repos/acme/widgets?per_page=5").await;
    let app_window = (start, SystemTime::now());
    app.assert_served(200, "app", "installed");
    assert_eq!(app.json(), app_body);
    let tokens = w.fake.issued_tokens();
    assert_eq!(tokens.len(), 1);

    // PAT-served.
    let start = SystemTime::now();
    let pat = w.get("/repos/other/thing").await;
    let pat_window = (start, SystemTime::now());
    pat.assert_served(200, "pat", "not_installed");

    // Refused.
    let start = SystemTime::now();
    let refused = w.get("/app/installations?per_page=100").await;
    let refused_window = (start, SystemTime::now());
    refused.assert_error(403, "none", "app_endpoint");

    // Aborted: the client reads the head and a little of a 32 MiB body, then hangs up.
    let start = SystemTime::now();
    let stream = TcpStream::connect(w.proxy.addr).await.unwrap();
    let local = stream.local_addr().unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    let conn = tokio::spawn(conn);
    let response = sender
        .send_request(
            http::Request::get("/repos/acme/widgets/tarball/main")
                .header("host", w.proxy.addr.to_string())
                .body(server_common::full(bytes::Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let aborted_id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    let mut body = response.into_body();
    let first = body.frame().await.unwrap().unwrap();
    assert!(!first.data_ref().unwrap().is_empty());
    drop(body);
    drop(sender);
    conn.abort();
    let records = w.audit(4).await;
    let aborted_window = (start, SystemTime::now());

    let r = record_of(&records, &app);
    assert_headers_agree(&app, r);
    assert_record(
        r,
        &app.header("x-request-id"),
        app.local,
        app_window,
        json!({
            "client": null, "method": "GET", "host": api, "path": "/repos/acme/widgets",
            "owner": "acme", "repo": "widgets", "credential": "app", "reason": "installed",
            "app_id": APP1, "installation_id": INST1, "hashed_token": hashed_token(&tokens[0]),
            "status": 200, "upstream_status": 200, "github_request_id": "C0DE:APP:0001",
            "rate_limit_remaining": 4321, "rate_limit_resource": "core",
            "bytes_out": app.body.len(), "outcome": "ok",
        }),
    );

    let r = record_of(&records, &pat);
    assert_headers_agree(&pat, r);
    assert_record(
        r,
        &pat.header("x-request-id"),
        pat.local,
        pat_window,
        json!({
            "client": null, "method": "GET", "host": api, "path": "/repos/other/thing",
            "owner": "other", "repo": "thing", "credential": "pat", "reason": "not_installed",
            "app_id": null, "installation_id": null, "hashed_token": hashed_token(PAT),
            "status": 200, "upstream_status": 200, "github_request_id": "C0DE:PAT:0002",
            "rate_limit_remaining": 4999, "rate_limit_resource": "core",
            "bytes_out": pat.body.len(), "outcome": "ok",
        }),
    );

    let r = record_of(&records, &refused);
    assert_headers_agree(&refused, r);
    assert_record(
        r,
        &refused.header("x-request-id"),
        refused.local,
        refused_window,
        json!({
            "client": null, "method": "GET", "host": api, "path": "/app/installations",
            "owner": null, "repo": null, "credential": "none", "reason": "app_endpoint",
            "app_id": null, "installation_id": null, "hashed_token": null,
            "status": 403, "upstream_status": null, "github_request_id": null,
            "rate_limit_remaining": null, "rate_limit_resource": null,
            "bytes_out": refused.body.len(), "outcome": "refused",
        }),
    );

    let r = records
        .iter()
        .find(|r| r["request_id"] == aborted_id)
        .unwrap();
    let bytes_out = r["bytes_out"].as_u64().unwrap();
    assert!(
        bytes_out > 0 && bytes_out < 32 * 1024 * 1024,
        "bytes_out {bytes_out}"
    );
    assert_record(
        r,
        &aborted_id,
        local,
        aborted_window,
        json!({
            "client": null, "method": "GET", "host": api,
            "path": "/repos/acme/widgets/tarball/main",
            "owner": "acme", "repo": "widgets", "credential": "app", "reason": "installed",
            "app_id": APP1, "installation_id": INST1, "hashed_token": hashed_token(&tokens[0]),
            "status": 200, "upstream_status": 200, "github_request_id": "C0DE:BIG:0003",
            "rate_limit_remaining": 4320, "rate_limit_resource": "core",
            "bytes_out": bytes_out, "outcome": "aborted",
        }),
    );
    assert_eq!(w.fake.mint_count(), 1, "one token served both App requests");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_gives_the_same_credential_and_reason_as_the_audit_record() {
    let w = World::start().await;
    let shared = &w.proxy.shared;
    let api = w.api_authority();
    for (path, credential, reason) in [
        ("/repos/acme/widgets", "app", "installed"),
        ("/repos/other/thing", "pat", "not_installed"),
        ("/repos/acme/widgets/pulls?state=open", "app", "installed"),
    ] {
        let reply = w.get(path).await;
        reply.assert_served(200, credential, reason);
        let record = &w.record(&reply).await;
        // The URL as GitHub knows it, and as the client addressed the proxy.
        for url in [
            format!("https://{api}{path}"),
            format!("{}{path}", w.proxy_base()),
        ] {
            let e = gh_token_proxy::explain::explain(
                &shared.config,
                &shared.resolver,
                &url,
                &Method::GET,
            )
            .await
            .unwrap();
            let e = serde_json::to_value(&e).unwrap();
            assert_eq!(e["credential"], record["credential"], "{url}: {e}");
            assert_eq!(e["reason"], record["reason"], "{url}: {e}");
            assert_eq!(e["app_id"], record["app_id"], "{url}: {e}");
            assert_eq!(e["installation_id"], record["installation_id"], "{url}");
            assert_eq!(e["hashed_token"], record["hashed_token"], "{url}");
        }
    }
    // A refusal: explain says the same reason.
    let reply = w.get("/app/installations").await;
    let record = w.record(&reply).await;
    let err = gh_token_proxy::explain::explain(
        &shared.config,
        &shared.resolver,
        &format!("https://{api}/app/installations"),
        &Method::GET,
    )
    .await
    .unwrap_err();
    assert_eq!(record["reason"], err.reason.as_str());
    assert_eq!(w.fake.mint_count(), 1, "explain reused the proxy's token");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_explain_endpoint_agrees_with_the_audit_record() {
    let w = World::start().await;
    let api = w.api_authority();
    for (path, credential, reason) in [
        ("/repos/acme/widgets", "app", "installed"),
        ("/repos/other/thing", "pat", "not_installed"),
    ] {
        let reply = w.get(path).await;
        reply.assert_served(200, credential, reason);
        let record = &w.record(&reply).await;
        let url = format!("https://{api}{path}");
        let encoded: String =
            percent_encoding::utf8_percent_encode(&url, percent_encoding::NON_ALPHANUMERIC)
                .to_string();
        let response = w
            .proxy
            .admin_get(&format!("/explain?url={encoded}&method=GET"))
            .await;
        assert_eq!(response.status(), 200, "{:?}", response.body());
        let e: Value = serde_json::from_slice(response.body()).unwrap();
        assert_eq!(e["credential"], record["credential"], "{e}");
        assert_eq!(e["reason"], record["reason"], "{e}");
        assert_eq!(e["hashed_token"], record["hashed_token"], "{e}");
        assert_eq!(e["owner"], record["owner"], "{e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_app_token_is_evicted_and_the_request_retried_with_a_fresh_one() {
    let w = World::start().await;
    w.fake.set_strict_auth(true);
    let first = w.get("/repos/acme/widgets").await;
    first.assert_served(200, "app", "installed");
    let old = w.fake.issued_tokens();
    assert_eq!(old.len(), 1);
    w.fake.revoke_token(&old[0]);

    let retried = w.get("/repos/acme/widgets").await;
    retried.assert_served(200, "app", "installed");
    assert_eq!(w.fake.mint_count(), 2);
    let new = w.fake.issued_tokens();
    assert_eq!(new.len(), 1, "the revoked token is gone, one fresh one");
    assert_ne!(new[0], old[0]);
    assert_eq!(retried.json()["auth"], format!("app:{INST1}"));
    // GitHub saw the revoked token once, then the fresh one.
    let auths = w.fake.auths_for("/repos/acme/widgets");
    assert_eq!(
        auths,
        [
            Auth::Installation(INST1),
            Auth::Invalid,
            Auth::Installation(INST1)
        ]
    );
    let r = w.record(&retried).await;
    assert_eq!(r["hashed_token"], hashed_token(&new[0]));
    assert_eq!(r["upstream_status"], 200);

    // The next request uses the fresh token without another mint.
    w.get("/repos/acme/widgets")
        .await
        .assert_served(200, "app", "installed");
    assert_eq!(w.fake.mint_count(), 2);
}
